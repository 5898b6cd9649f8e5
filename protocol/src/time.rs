//! Wall-clock instants as they travel in records and documents: milliseconds since the Unix epoch.
//! JSON shows them as RFC 3339 text.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Milliseconds since 1970-01-01T00:00:00Z.
///
/// Any value is valid, since times come from other nodes: one past the year 9999, which RFC 3339
/// cannot write, shows as `+<ms>ms` (and parses back), so that no time, however large, can
/// make displaying or serialising it fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(pub u64);

/// The last instant RFC 3339 can write: 9999-12-31T23:59:59.999Z.
pub const MAX_RFC3339: Timestamp = Timestamp(253_402_300_799_999);

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
    /// Saturates at the latest time the platform can hold.
    fn from(t: Timestamp) -> Self {
        let mut ms = t.0;
        loop {
            if let Some(st) = UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
                return st;
            }
            ms /= 2;
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self > MAX_RFC3339 {
            return write!(f, "+{}ms", self.0);
        }
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(SystemTime::from(*self))
        )
    }
}

impl FromStr for Timestamp {
    type Err = humantime::TimestampError;

    /// RFC 3339 (`2026-12-31T00:00:00Z`); a date alone means its midnight UTC; `+<ms>ms` as
    /// [`Display`](fmt::Display) writes a time past the year 9999.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(ms) = s.strip_prefix('+').and_then(|r| r.strip_suffix("ms")) {
            return ms
                .parse()
                .map(Timestamp)
                .map_err(|_| humantime::TimestampError::InvalidFormat);
        }
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

    #[test]
    fn any_time_displays_and_round_trips_however_large() {
        for ms in [
            MAX_RFC3339.0,
            MAX_RFC3339.0 + 1,
            253_402_300_800_000 * 2,
            u64::MAX / 2,
            u64::MAX,
        ] {
            let t = Timestamp(ms);
            let text = t.to_string();
            assert_eq!(text.parse::<Timestamp>().unwrap(), t, "{text}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
            let _ = SystemTime::from(t);
        }
        assert_eq!(MAX_RFC3339.to_string(), "9999-12-31T23:59:59.999Z");
    }
}
