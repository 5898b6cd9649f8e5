//! Version vectors: for each author, the highest sequence number held without a gap.
//! Two nodes swap them and each pulls what the other has beyond its own.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::keys::NodeId;

/// {author -> highest contiguous seq}. An author absent from the map has nothing (0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<NodeId, u64>);

impl VersionVector {
    /// The highest contiguous seq held of `author`.
    pub fn get(&self, author: &NodeId) -> u64 {
        self.0.get(author).copied().unwrap_or(0)
    }

    /// Raises `author`'s entry to `seq` (never lowers it).
    pub fn raise(&mut self, author: NodeId, seq: u64) {
        let e = self.0.entry(author).or_insert(0);
        *e = (*e).max(seq);
    }

    /// What `self` holds that `other` lacks: per author, the range of seqs to send.
    pub fn ahead_of(&self, other: &VersionVector) -> Vec<(NodeId, RangeInclusive<u64>)> {
        self.0
            .iter()
            .filter_map(|(author, &mine)| {
                let theirs = other.get(author);
                (mine > theirs).then(|| (*author, theirs + 1..=mine))
            })
            .collect()
    }

    /// Total number of records counted.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    #[test]
    fn ahead_of_names_exactly_the_missing_ranges() {
        let a = SecretKey::from_seed([1; 32]).id();
        let b = SecretKey::from_seed([2; 32]).id();
        let c = SecretKey::from_seed([3; 32]).id();
        let mut mine = VersionVector::default();
        mine.raise(a, 5);
        mine.raise(b, 2);
        let mut theirs = VersionVector::default();
        theirs.raise(a, 3);
        theirs.raise(b, 7);
        theirs.raise(c, 1);
        assert_eq!(mine.ahead_of(&theirs), vec![(a, 4..=5)]);
        let mut back = theirs.ahead_of(&mine);
        back.sort_by_key(|(id, _)| *id);
        let mut want = vec![(b, 3..=7), (c, 1..=1)];
        want.sort_by_key(|(id, _)| *id);
        assert_eq!(back, want);
    }
}
