//! A registry blob read by range, through the chunk cache.

use std::sync::{Arc, RwLock};

use super::cache::BlobCache;
use super::registry::RegistryClient;
use crate::io::{LocalFile, ReadAt};
use crate::{Error, Result};

/// Bytes per fetch when there is no cache.
const UNCACHED_CHUNK: u64 = 256 << 10;

/// A remote blob of known size.
pub struct RemoteBlob {
    client: Arc<RegistryClient>,
    repo_blob_url: String,
    digest: String,
    size: u64,
    cache: Option<Arc<BlobCache>>,
    name: String,
    /// The downloaded copy, once there is one: reads go there.
    local: RwLock<Option<Arc<LocalFile>>>,
}

impl RemoteBlob {
    /// Blob `digest` of `size` bytes under `repo_blob_url`.
    pub fn new(
        client: Arc<RegistryClient>,
        repo_blob_url: &str,
        digest: &str,
        size: u64,
        cache: Option<Arc<BlobCache>>,
    ) -> Self {
        let name = format!("{}/{digest}", repo_blob_url.trim_end_matches('/'));
        RemoteBlob {
            client,
            repo_blob_url: repo_blob_url.to_string(),
            digest: digest.to_string(),
            size,
            cache,
            name,
            local: RwLock::new(None),
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Bytes straight from the registry, bypassing the cache (the background download).
    pub fn fetch_uncached(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.client.read_range(&self.repo_blob_url, &self.digest, offset, len)
    }

    /// From now on, reads come from `local` (the verified downloaded copy).
    pub fn switch_to_local(&self, local: Arc<LocalFile>) {
        *self.local.write().unwrap_or_else(|p| p.into_inner()) = Some(local);
    }

    /// True once reads come from a local copy.
    pub fn is_local(&self) -> bool {
        self.local.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn chunk_size(&self) -> u64 {
        self.cache.as_ref().map_or(UNCACHED_CHUNK, |c| c.chunk_size())
    }

    /// Chunk `i`, from the cache or the registry.
    fn chunk(&self, i: u64) -> Result<Arc<Vec<u8>>> {
        let cs = self.chunk_size();
        let start = i * cs;
        let len = cs.min(self.size - start) as usize;
        let fetch = || self.client.read_range(&self.repo_blob_url, &self.digest, start, len);
        match &self.cache {
            Some(c) => c.get(&self.digest, i, fetch),
            None => fetch().map(Arc::new),
        }
    }
}

impl ReadAt for RemoteBlob {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let local = self.local.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(l) = local {
            return l.read_at(buf, offset);
        }
        let n = buf.len().min((self.size - offset) as usize);
        let cs = self.chunk_size();
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let i = pos / cs;
            let chunk = self.chunk(i)?;
            let within = (pos - i * cs) as usize;
            if within >= chunk.len() {
                return Err(Error::Truncated {
                    file: self.name.clone(),
                    what: format!("chunk {i}"),
                    offset: pos,
                    end: offset + n as u64,
                    size: self.size,
                });
            }
            let m = (chunk.len() - within).min(n - done);
            buf[done..done + m].copy_from_slice(&chunk[within..within + m]);
            done += m;
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn invalidate(&self, offset: u64, len: u64) -> bool {
        let Some(c) = &self.cache else { return true }; // uncached: a new read fetches anew
        let cs = c.chunk_size();
        for i in offset / cs..=(offset + len.max(1) - 1) / cs {
            c.drop_chunk(&self.digest, i);
        }
        true
    }
}
