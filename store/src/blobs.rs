//! Content-addressed blobs (build logs): stored compressed under the hash of their content,
//! checked against that hash when read back; each kept until a date its builds set
//! ([`Store::keep_blob_until`]), after which [`Store::expire_blobs`] deletes it.

use buildmesh_protocol::{Hash, Timestamp};

use crate::keys::{Key, split_u64};
use crate::{Store, StoreError, corrupt};

/// What an expiry pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Blobs deleted.
    pub blobs: u64,
    /// Their stored (compressed) bytes.
    pub bytes: u64,
    /// Whether entries due were left for the next pass (it stopped at its limit).
    pub more: bool,
}

/// The largest blob kept, uncompressed.
pub const MAX_BLOB_BYTES: usize = 64 * 1024 * 1024;

impl Store {
    /// Stores `content` and returns its hash. Storing the same content twice is harmless.
    pub fn put_blob(&self, content: &[u8]) -> Result<Hash, StoreError> {
        if content.len() > MAX_BLOB_BYTES {
            return Err(StoreError::BlobTooLarge {
                len: content.len(),
                limit: MAX_BLOB_BYTES,
            });
        }
        let hash = Hash::of(content);
        if !self.blobs.contains_key(hash.0)? {
            self.blobs
                .insert(hash.0, lz4_flex::compress_prepend_size(content))?;
        }
        Ok(hash)
    }

    /// Stores a blob fetched from a peer, refusing it if it does not match `hash`. A blob
    /// whose keeping date passed here is not stored again (it expired).
    pub fn put_blob_checked(&self, hash: &Hash, content: &[u8]) -> Result<bool, StoreError> {
        if Hash::of(content) != *hash {
            return Ok(false);
        }
        if self.kept_until(hash)?.is_some_and(|t| t < Timestamp::now()) {
            return Ok(true);
        }
        self.put_blob(content)?;
        Ok(true)
    }

    /// Keeps the blob (held now or later) at least until `until`: a build that names it in
    /// its steps sets this from its builder's retention. Only ever moves the date later.
    pub fn keep_blob_until(&self, hash: &Hash, until: Timestamp) -> Result<(), StoreError> {
        let old = self.kept_until(hash)?;
        if old.is_some_and(|t| t >= until) {
            return Ok(());
        }
        if let Some(t) = old {
            self.blob_expiry
                .remove(Key::new().time(t).hash(hash).build())?;
        }
        self.blob_expiry
            .insert(Key::new().time(until).hash(hash).build(), &[])?;
        self.blob_keep.insert(hash.0, &until.0.to_be_bytes())?;
        Ok(())
    }

    /// The date the blob is kept until, if a build set one.
    pub fn kept_until(&self, hash: &Hash) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .blob_keep
            .get(hash.0)?
            .and_then(|v| split_u64(&v))
            .map(Timestamp))
    }

    /// Deletes up to `max` blobs whose keeping date is before `before`, earliest first (pass
    /// a time far ahead to make room under a disk budget). The date stays, so a peer's copy
    /// is not taken back in.
    pub fn expire_blobs(&self, before: Timestamp, max: usize) -> Result<Expired, StoreError> {
        let mut out = Expired::default();
        let end = Key::new().time(before).build();
        for item in self.blob_expiry.range(..end) {
            if out.blobs as usize >= max {
                out.more = true;
                break;
            }
            let (k, _) = item?;
            let hash = k
                .get(8..40)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(Hash)
                .ok_or_else(|| corrupt("blob_expiry", &k, "no hash"))?;
            if let Some(old) = self.blobs.remove(hash.0)? {
                out.bytes += old.len() as u64;
            }
            out.blobs += 1;
            self.blob_expiry.remove(&k)?;
        }
        Ok(out)
    }

    /// Blobs held, and their stored bytes (walks every blob: for measurements).
    pub fn blob_usage(&self) -> Result<(u64, u64), StoreError> {
        let (mut n, mut bytes) = (0, 0);
        for item in self.blobs.iter() {
            let (_, v) = item?;
            n += 1;
            bytes += v.len() as u64;
        }
        Ok((n, bytes))
    }

    /// The blob with this hash, if held.
    pub fn blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(packed) = self.blobs.get(hash.0)? else {
            return Ok(None);
        };
        let size = packed
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| corrupt("blobs", &hash.0, "truncated"))?;
        if size > MAX_BLOB_BYTES {
            return Err(corrupt("blobs", &hash.0, "size header out of range"));
        }
        let content = lz4_flex::decompress_size_prepended(&packed)
            .map_err(|e| corrupt("blobs", &hash.0, e))?;
        if Hash::of(&content) != *hash {
            return Err(corrupt("blobs", &hash.0, "content does not match its hash"));
        }
        Ok(Some(content))
    }

    /// The blob as stored — compressed, with its size in front — for sending to a peer in
    /// parts ([`Store::put_packed_blob`] takes it back).
    pub fn packed_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(hash.0)?.map(|v| v.to_vec()))
    }

    /// Stores a blob fetched from a peer in its packed form, refusing it (`Ok(false)`) if it
    /// does not unpack, is larger than [`MAX_BLOB_BYTES`] or does not match `hash`.
    pub fn put_packed_blob(&self, hash: &Hash, packed: &[u8]) -> Result<bool, StoreError> {
        let Some(size) = packed
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        else {
            return Ok(false);
        };
        // The size header comes from outside: check it before it sizes an allocation.
        if size > MAX_BLOB_BYTES {
            return Ok(false);
        }
        let Ok(content) = lz4_flex::decompress_size_prepended(packed) else {
            return Ok(false);
        };
        self.put_blob_checked(hash, &content)
    }

    /// Whether the blob is held.
    pub fn has_blob(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.blobs.contains_key(hash.0)?)
    }
}
