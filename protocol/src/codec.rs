//! The one place where CBOR is written and read.
//!
//! Every byte that is signed, hashed, stored or sent goes through [`encode`] and [`decode`], so the
//! encoding stays canonical (struct fields in declaration order, maps as `BTreeMap`, no floats, no
//! indefinite lengths) and a later move to another CBOR crate touches this file only.

use serde::{Serialize, de::DeserializeOwned};

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be written (a type that CBOR cannot express).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's complaint.
        #[source]
        source: serde_cbor::Error,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed {what} ({len} bytes): {source}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Length of the input.
        len: usize,
        /// The decoder's complaint.
        #[source]
        source: serde_cbor::Error,
    },
    /// The input is larger than this kind of value may be.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Length of the input.
        len: usize,
        /// The limit for this kind of value.
        limit: usize,
    },
}

/// Encodes `value` canonically.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    serde_cbor::to_vec(value).map_err(|source| CodecError::Encode { what, source })
}

/// Decodes exactly one `T` from `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    serde_cbor::from_slice(bytes).map_err(|source| CodecError::Decode {
        what,
        len: bytes.len(),
        source,
    })
}

/// Decodes like [`decode`], refusing input over `limit` bytes before looking at it.
pub fn decode_limited<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    limit: usize,
) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            what,
            len: bytes.len(),
            limit,
        });
    }
    decode(what, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn same_value_same_bytes() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), 2u32);
        a.insert("a".to_string(), 1u32);
        let mut b = BTreeMap::new();
        b.insert("a".to_string(), 1u32);
        b.insert("b".to_string(), 2u32);
        assert_eq!(encode("map", &a).unwrap(), encode("map", &b).unwrap());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode("n", &7u32).unwrap();
        bytes.push(0);
        assert!(decode::<u32>("n", &bytes).is_err());
    }

    #[test]
    fn limit_is_checked_first() {
        let bytes = encode("s", &"x".repeat(100)).unwrap();
        assert!(matches!(
            decode_limited::<String>("s", &bytes, 10),
            Err(CodecError::TooLarge { limit: 10, .. })
        ));
    }
}
