//! Byte keys for the sled trees: big-endian numbers and length-prefixed strings, so that range
//! scans come out in sequence or time order and one string can never run into the next.

use buildmesh_protocol::{Hash, NodeId, Timestamp};

/// Builds a key piece by piece.
#[derive(Debug, Default)]
pub(crate) struct Key(Vec<u8>);

impl Key {
    pub(crate) fn new() -> Self {
        Key(Vec::with_capacity(64))
    }

    pub(crate) fn node(mut self, id: &NodeId) -> Self {
        self.0.extend_from_slice(id.as_bytes());
        self
    }

    pub(crate) fn hash(mut self, h: &Hash) -> Self {
        self.0.extend_from_slice(&h.0);
        self
    }

    pub(crate) fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub(crate) fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub(crate) fn time(self, t: Timestamp) -> Self {
        self.u64(t.0)
    }

    /// A string, prefixed by its length so that a prefix scan on it is exact.
    pub(crate) fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    pub(crate) fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    pub(crate) fn build(self) -> Vec<u8> {
        self.0
    }
}

/// (author, seq): where a record lives.
pub(crate) fn record(author: &NodeId, seq: u64) -> Vec<u8> {
    Key::new().node(author).u64(seq).build()
}

/// Splits the tail of a key into fixed-size parts.
pub(crate) fn split_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

pub(crate) fn split_node(b: &[u8]) -> Option<NodeId> {
    let arr: [u8; 32] = b.get(..32)?.try_into().ok()?;
    NodeId::from_bytes(arr).ok()
}
