//! The local cache of remote blobs: chunks of `refill` bytes, one file each under
//! `<dir>/<hex[..2]>/<hex>/<chunk>`, and metadata ranges fetched as they are (see
//! [`BlobCache::claim_extent`]) under `<dir>/<hex[..2]>/<hex>/meta-<offset>-<len>`; kept across
//! restarts, evicted least recently used past the size limit.
//!
//! Each file ends with a CRC32C of its bytes, checked on every read: a chunk damaged on disk
//! is dropped and fetched again, never served. Many threads asking for the same missing chunk
//! share one fetch (the first fetches, the others wait for its result).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::crc::raw_crc32c;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"OBC1";
const TRAILER: usize = 8;

/// A chunk being fetched, and its waiters.
struct Flight {
    result: Mutex<Option<std::result::Result<Arc<Vec<u8>>, String>>>,
    done: Condvar,
}

/// What [`BlobCache::claim`] found.
pub enum Claim<'a> {
    /// The chunk, from disk.
    Cached(Arc<Vec<u8>>),
    /// Another thread is fetching it.
    Wait(Waiter),
    /// Nobody is: the caller fetches it.
    Fetch(Lead<'a>),
}

/// A chunk another thread is fetching.
pub struct Waiter {
    flight: Arc<Flight>,
    what: String,
}

impl Waiter {
    /// Its bytes, or the fetch's error, once the fetch ends.
    pub fn wait(self) -> Result<Arc<Vec<u8>>> {
        let mut r = self.flight.result.lock().unwrap_or_else(|p| p.into_inner());
        while r.is_none() {
            r = self.flight.done.wait(r).unwrap_or_else(|p| p.into_inner());
        }
        match r.as_ref() {
            Some(Ok(d)) => Ok(d.clone()),
            Some(Err(e)) => Err(Error::io(&self.what, "fetch", std::io::Error::other(e.clone()))),
            None => unreachable_none(),
        }
    }
}

/// The duty to fetch a chunk: [`complete`](Lead::complete) stores the result and wakes the
/// waiters; dropped uncompleted, the waiters get an error.
pub struct Lead<'a> {
    cache: &'a BlobCache,
    rel: PathBuf,
    flight: Arc<Flight>,
    what: String,
    completed: bool,
}

impl Lead<'_> {
    /// Stores `result` (when it is data) and hands it to the waiters.
    pub fn complete(mut self, result: Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        let result = result.map(Arc::new);
        if let Ok(d) = &result {
            if let Err(e) = self.cache.store(&self.rel, d) {
                tracing::warn!(error = %e, "cannot store a chunk in the cache; serving it uncached");
            }
        }
        self.finish(result.as_ref().map(Arc::clone).map_err(|e| e.to_string()));
        result
    }

    fn finish(&mut self, r: std::result::Result<Arc<Vec<u8>>, String>) {
        self.completed = true;
        *self.flight.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.flight.done.notify_all();
        self.cache.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.rel);
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.completed {
            let what = format!("{} was not fetched", self.what);
            self.finish(Err(what));
        }
    }
}

struct Lru {
    /// Chunk file (relative) -> (bytes on disk, last use).
    entries: HashMap<PathBuf, (u64, u64)>,
    total: u64,
    tick: u64,
}

/// The chunk cache.
pub struct BlobCache {
    dir: PathBuf,
    limit: u64,
    chunk: u64,
    lru: Mutex<Lru>,
    flights: Mutex<HashMap<PathBuf, Arc<Flight>>>,
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, h)| h)
}

impl BlobCache {
    /// Opens (or makes) the cache in `dir` with `limit` bytes and chunks of `chunk` bytes; what
    /// an earlier process cached is kept, oldest first in line for eviction.
    pub fn open(dir: &Path, limit: u64, chunk: u64) -> Result<Arc<Self>> {
        if chunk == 0 || !chunk.is_multiple_of(4096) {
            return Err(Error::InvalidArgument(format!(
                "cache refill size {chunk} must be a positive multiple of 4096"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), "create the cache", e))?;
        let mut found = Vec::new();
        for a in
            std::fs::read_dir(dir).map_err(|e| Error::io(dir.display().to_string(), "list the cache", e))?.flatten()
        {
            for b in std::fs::read_dir(a.path()).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(b.path()).into_iter().flatten().flatten() {
                    let Ok(md) = f.metadata() else { continue };
                    if !md.is_file() {
                        continue;
                    }
                    if f.file_name().to_string_lossy().ends_with(".tmp") {
                        let _ = std::fs::remove_file(f.path());
                        continue;
                    }
                    let rel = f.path().strip_prefix(dir).map(Path::to_path_buf).unwrap_or_default();
                    found.push((md.modified().ok(), rel, md.len()));
                }
            }
        }
        found.sort();
        let mut lru = Lru { entries: HashMap::new(), total: 0, tick: 0 };
        for (_, rel, len) in found {
            lru.tick += 1;
            lru.total += len;
            lru.entries.insert(rel, (len, lru.tick));
        }
        let c = Arc::new(BlobCache {
            dir: dir.to_path_buf(),
            limit,
            chunk,
            lru: Mutex::new(lru),
            flights: Mutex::new(HashMap::new()),
        });
        c.evict();
        Ok(c)
    }

    /// Bytes per chunk.
    pub fn chunk_size(&self) -> u64 {
        self.chunk
    }

    /// Bytes cached now.
    pub fn used(&self) -> u64 {
        self.lock_lru().total
    }

    fn lock_lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rel(digest: &str, index: u64) -> PathBuf {
        let h = hex_of(digest);
        PathBuf::from(&h[..h.len().min(2)]).join(h).join(index.to_string())
    }

    /// Chunk `index` of blob `digest`: from disk if cached and intact, else from `fetch`
    /// (shared with concurrent askers), then stored.
    pub fn get(&self, digest: &str, index: u64, fetch: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        match self.claim(digest, index) {
            Claim::Cached(d) => Ok(d),
            Claim::Wait(w) => w.wait(),
            Claim::Fetch(lead) => lead.complete(fetch()),
        }
    }

    /// Chunk `index` of blob `digest` as it stands: cached, being fetched by someone else
    /// (wait for it), or missing, in which case the caller now owns its fetch and must
    /// [`complete`](Lead::complete) it (dropping the lead fails the waiters).
    pub fn claim(&self, digest: &str, index: u64) -> Claim<'_> {
        self.claim_rel(Self::rel(digest, index), format!("{digest} chunk {index}"))
    }

    /// As [`Self::claim`], for the `len` bytes at `offset` of blob `digest` kept as they are
    /// (a metadata range, not chunks): from disk, from another thread's fetch, or to fetch.
    pub fn claim_extent(&self, digest: &str, offset: u64, len: u64) -> Claim<'_> {
        self.claim_rel(Self::rel_extent(digest, offset, len), format!("{digest} bytes {offset}+{len}"))
    }

    fn claim_rel(&self, rel: PathBuf, what: String) -> Claim<'_> {
        if let Some(data) = self.load(&rel) {
            return Claim::Cached(Arc::new(data));
        }
        let mut f = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        // (fetched and stored between the load and taking the lock)
        if f.get(&rel).is_none() && self.lock_lru().entries.contains_key(&rel) {
            drop(f);
            if let Some(data) = self.load(&rel) {
                return Claim::Cached(Arc::new(data));
            }
            f = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        }
        match f.get(&rel) {
            Some(x) => Claim::Wait(Waiter { flight: x.clone(), what }),
            None => {
                let x = Arc::new(Flight { result: Mutex::new(None), done: Condvar::new() });
                f.insert(rel.clone(), x.clone());
                Claim::Fetch(Lead { cache: self, rel, flight: x, what, completed: false })
            }
        }
    }

    /// True if chunk `index` of `digest` is on disk (not checked).
    fn rel_extent(digest: &str, offset: u64, len: u64) -> PathBuf {
        let h = hex_of(digest);
        PathBuf::from(&h[..h.len().min(2)]).join(h).join(format!("meta-{offset}-{len}"))
    }

    /// Forgets the range [`Self::claim_extent`] kept at `offset` (`len` bytes).
    pub fn drop_extent(&self, digest: &str, offset: u64, len: u64) {
        self.drop_rel(&Self::rel_extent(digest, offset, len));
    }

    fn drop_rel(&self, rel: &Path) {
        let _ = std::fs::remove_file(self.dir.join(rel));
        let mut lru = self.lock_lru();
        if let Some((len, _)) = lru.entries.remove(rel) {
            lru.total -= len;
        }
    }

    pub fn contains(&self, digest: &str, index: u64) -> bool {
        self.lock_lru().entries.contains_key(&Self::rel(digest, index))
    }

    /// Drops chunk `index` of `digest` (a reader found its bytes wrong).
    pub fn drop_chunk(&self, digest: &str, index: u64) {
        self.drop_rel(&Self::rel(digest, index));
    }

    fn load(&self, rel: &Path) -> Option<Vec<u8>> {
        let path = self.dir.join(rel);
        let mut data = std::fs::read(&path).ok()?;
        let ok = data.len() >= TRAILER && {
            let (body, t) = data.split_at(data.len() - TRAILER);
            &t[4..] == MAGIC && u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == raw_crc32c(body, 0)
        };
        if !ok {
            tracing::warn!(file = %path.display(), "a cached chunk is damaged: dropping it");
            let _ = std::fs::remove_file(&path);
            let mut lru = self.lock_lru();
            if let Some((len, _)) = lru.entries.remove(rel) {
                lru.total -= len;
            }
            return None;
        }
        data.truncate(data.len() - TRAILER);
        let mut lru = self.lock_lru();
        lru.tick += 1;
        let t = lru.tick;
        if let Some(e) = lru.entries.get_mut(rel) {
            e.1 = t;
        }
        Some(data)
    }

    fn store(&self, rel: &Path, data: &[u8]) -> Result<()> {
        let path = self.dir.join(rel);
        let shown = path.display().to_string();
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io(&shown, "create the cache directory", e))?;
        }
        let tmp = path.with_extension("tmp");
        let mut bytes = Vec::with_capacity(data.len() + TRAILER);
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(&raw_crc32c(data, 0).to_le_bytes());
        bytes.extend_from_slice(MAGIC);
        std::fs::write(&tmp, &bytes).map_err(|e| Error::io(&shown, "write a cached chunk", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&shown, "write a cached chunk", e))?;
        {
            let mut lru = self.lock_lru();
            lru.tick += 1;
            let t = lru.tick;
            if let Some((old, _)) = lru.entries.insert(rel.to_path_buf(), (bytes.len() as u64, t)) {
                lru.total -= old;
            }
            lru.total += bytes.len() as u64;
            // under the same lock: the total is never seen over the limit
            self.evict_locked(&mut lru);
        }
        Ok(())
    }

    /// Removes least recently used chunks until the cache fits its limit.
    fn evict(&self) {
        self.evict_locked(&mut self.lock_lru());
    }

    fn evict_locked(&self, lru: &mut Lru) {
        if lru.total <= self.limit {
            return;
        }
        let mut by_age: Vec<(u64, PathBuf, u64)> =
            lru.entries.iter().map(|(p, &(len, t))| (t, p.clone(), len)).collect();
        by_age.sort();
        for (_, rel, len) in by_age {
            if lru.total <= self.limit {
                break;
            }
            let _ = std::fs::remove_file(self.dir.join(&rel));
            lru.entries.remove(&rel);
            lru.total -= len;
        }
    }
}

fn unreachable_none<T>() -> Result<T> {
    Err(Error::InvalidArgument("a cache fetch ended without a result".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const D: &str = "sha256:abcdef";

    #[test]
    fn hits_misses_single_flight_and_healing() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlobCache::open(dir.path(), 1 << 20, 4096).unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        // eight threads, one fetch: the fetch ends only once the seven others wait for it
        // (each waiter holds the fetch's flight, as do the lead and the table of flights)
        let waiters = |c: &BlobCache| {
            let f = c.flights.lock().unwrap();
            f.get(&BlobCache::rel(D, 3)).map_or(0, |x| Arc::strong_count(x) - 2)
        };
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, f) = (c.clone(), fetches.clone());
                std::thread::spawn(move || {
                    c.get(D, 3, || {
                        f.fetch_add(1, Ordering::SeqCst);
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                        while waiters(&c) < 7 {
                            assert!(std::time::Instant::now() < deadline, "the other threads do not wait");
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        Ok(vec![7u8; 4096])
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(*t.join().unwrap(), vec![7u8; 4096]);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // a hit, also after reopening
        let c = BlobCache::open(dir.path(), 1 << 20, 4096).unwrap();
        assert_eq!(*c.get(D, 3, || panic!("must be cached")).unwrap(), vec![7u8; 4096]);
        // damage on disk: dropped and fetched again
        let file = dir.path().join("ab/abcdef/3");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        assert_eq!(*c.get(D, 3, || Ok(vec![8u8; 4096])).unwrap(), vec![8u8; 4096]);
        // an error reaches every waiter and nothing is stored
        assert!(c.get(D, 4, || Err(Error::InvalidArgument("boom".into()))).is_err());
        assert!(!dir.path().join("ab/abcdef/4").exists());
    }

    #[test]
    fn the_limit_holds_evicting_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlobCache::open(dir.path(), 5 * (4096 + 8), 4096).unwrap();
        for i in 0..5 {
            c.get(D, i, || Ok(vec![i as u8; 4096])).unwrap();
        }
        c.get(D, 0, || panic!("cached")).unwrap(); // 0 becomes the most recent
        for i in 5..8 {
            c.get(D, i, || Ok(vec![i as u8; 4096])).unwrap();
        }
        assert!(c.used() <= 5 * (4096 + 8));
        assert!(dir.path().join("ab/abcdef/0").exists(), "recently used stays");
        assert!(!dir.path().join("ab/abcdef/1").exists(), "least recently used goes");
        // reopening with a smaller limit trims at once
        let c = BlobCache::open(dir.path(), 2 * (4096 + 8), 4096).unwrap();
        assert!(c.used() <= 2 * (4096 + 8));
    }
}
