//! Wall-clock instants as they travel in records and documents: milliseconds since the Unix epoch.
//! JSON shows them as RFC 3339 text.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time. State machines never call this: they are handed `now`.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Timestamp(ms.min(u64::MAX as u128) as u64)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_millis(t.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(SystemTime::from(*self))
        )
    }
}

impl FromStr for Timestamp {
    type Err = humantime::TimestampError;

    /// RFC 3339 (`2026-12-31T00:00:00Z`); a date alone means its midnight UTC.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let full;
        let s = if s.len() == 10 {
            full = format!("{s}T00:00:00Z");
            full.as_str()
        } else {
            s
        };
        humantime::parse_rfc3339_weak(s).map(Timestamp::from)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(de::Error::custom)
        } else {
            u64::deserialize(d).map(Timestamp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t: Timestamp = "2026-12-31T10:20:30Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-12-31T10:20:30.000Z");
        assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
        let d: Timestamp = "2026-12-31".parse().unwrap();
        assert!(d < t);
        assert!("next tuesday".parse::<Timestamp>().is_err());
    }
}
