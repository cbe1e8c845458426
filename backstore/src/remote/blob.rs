//! A registry blob read by range, through the chunk cache. Sequential reads are met by
//! read-ahead: the next chunks are fetched into the cache in the background while the reader
//! works on the current one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::cache::BlobCache;
use super::registry::RegistryClient;
use crate::io::{LocalFile, ReadAt};
use crate::{Error, Result};

/// Bytes per fetch when there is no cache.
const UNCACHED_CHUNK: u64 = 256 << 10;
/// Chunks fetched ahead of a sequential reader.
const READ_AHEAD: u64 = 8;
/// Read-ahead fetches in flight per blob, at most.
const MAX_AHEAD_IN_FLIGHT: usize = 4;

/// What fetches a chunk: shared with read-ahead threads.
struct Fetcher {
    client: Arc<RegistryClient>,
    repo_blob_url: String,
    digest: String,
    size: u64,
    cache: Option<Arc<BlobCache>>,
    in_flight: AtomicUsize,
}

impl Fetcher {
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

/// A remote blob of known size.
pub struct RemoteBlob {
    fetcher: Arc<Fetcher>,
    name: String,
    /// Where the last read ended, to see sequential reading.
    last_end: AtomicU64,
    /// The highest chunk read ahead so far.
    ahead_to: AtomicU64,
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
        let fetcher = Arc::new(Fetcher {
            client,
            repo_blob_url: repo_blob_url.to_string(),
            digest: digest.to_string(),
            size,
            cache,
            in_flight: AtomicUsize::new(0),
        });
        RemoteBlob {
            fetcher,
            name,
            last_end: AtomicU64::new(u64::MAX),
            ahead_to: AtomicU64::new(0),
            local: RwLock::new(None),
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> &str {
        &self.fetcher.digest
    }

    /// Bytes straight from the registry, bypassing the cache (the background download).
    pub fn fetch_uncached(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.fetcher.client.read_range(&self.fetcher.repo_blob_url, &self.fetcher.digest, offset, len)
    }

    /// Starts fetching the chunks after `last` into the cache (sequential reading).
    fn read_ahead(&self, last: u64) {
        let f = &self.fetcher;
        if f.cache.is_none() {
            return;
        }
        let chunks = f.size.div_ceil(f.chunk_size());
        let from = (last + 1).max(self.ahead_to.load(Ordering::Relaxed) + 1);
        let to = (last + READ_AHEAD).min(chunks.saturating_sub(1));
        for i in from..=to {
            if f.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_AHEAD_IN_FLIGHT {
                f.in_flight.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            self.ahead_to.fetch_max(i, Ordering::Relaxed);
            let f2 = f.clone();
            let spawned = std::thread::Builder::new().name("obd-readahead".into()).spawn(move || {
                if let Err(e) = f2.chunk(i) {
                    tracing::debug!(chunk = i, error = %e, "read-ahead failed (the reader will fetch it)");
                }
                f2.in_flight.fetch_sub(1, Ordering::AcqRel);
            });
            if spawned.is_err() {
                f.in_flight.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        }
    }

    /// From now on, reads come from `local` (the verified downloaded copy).
    pub fn switch_to_local(&self, local: Arc<LocalFile>) {
        *self.local.write().unwrap_or_else(|p| p.into_inner()) = Some(local);
    }

    /// True once reads come from a local copy.
    pub fn is_local(&self) -> bool {
        self.local.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

impl ReadAt for RemoteBlob {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.fetcher.size {
            return Ok(0);
        }
        let local = self.local.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(l) = local {
            return l.read_at(buf, offset);
        }
        let size = self.fetcher.size;
        let n = buf.len().min((size - offset) as usize);
        let cs = self.fetcher.chunk_size();
        if self.last_end.swap(offset + n as u64, Ordering::Relaxed) == offset || n as u64 >= cs {
            self.read_ahead((offset + n as u64 - 1) / cs);
        }
        // The chunks this read needs, fetched side by side when there are several.
        let (first, last) = (offset / cs, (offset + n as u64 - 1) / cs);
        let chunks: Vec<Result<Arc<Vec<u8>>>> = if first == last {
            vec![self.fetcher.chunk(first)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (first..=last).map(|i| s.spawn(move || self.fetcher.chunk(i))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(Error::InvalidArgument("a fetch thread panicked".into()))))
                    .collect()
            })
        };
        let mut done = 0usize;
        for (k, chunk) in chunks.into_iter().enumerate() {
            let chunk = chunk?;
            let i = first + k as u64;
            let pos = offset + done as u64;
            let within = (pos - i * cs) as usize;
            if within >= chunk.len() {
                return Err(Error::Truncated {
                    file: self.name.clone(),
                    what: format!("chunk {i}"),
                    offset: pos,
                    end: offset + n as u64,
                    size,
                });
            }
            let m = (chunk.len() - within).min(n - done);
            buf[done..done + m].copy_from_slice(&chunk[within..within + m]);
            done += m;
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.fetcher.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn invalidate(&self, offset: u64, len: u64) -> bool {
        let Some(c) = &self.fetcher.cache else { return true }; // uncached: a new read fetches anew
        let cs = c.chunk_size();
        for i in offset / cs..=(offset + len.max(1) - 1) / cs {
            c.drop_chunk(&self.fetcher.digest, i);
        }
        true
    }
}
