//! Content-addressed blobs (build logs): stored compressed under the hash of their content,
//! checked against that hash when read back.

use buildmesh_protocol::Hash;

use crate::{Store, StoreError, corrupt};

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

    /// Stores a blob fetched from a peer, refusing it if it does not match `hash`.
    pub fn put_blob_checked(&self, hash: &Hash, content: &[u8]) -> Result<bool, StoreError> {
        if Hash::of(content) != *hash {
            return Ok(false);
        }
        self.put_blob(content)?;
        Ok(true)
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
