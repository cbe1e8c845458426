//! A registry blob read by range, through the chunk cache.
//!
//! * **Range coalescing.** The chunks a read needs that are not cached are fetched with one
//!   request per run of consecutive chunks, and each chunk is handed to the cache (and to
//!   whoever waits for it) as soon as its bytes have arrived.
//! * **Adaptive read-ahead.** Reads that follow one another through the blob open a window of
//!   chunks fetched ahead in the background: as many whole chunks as the run of reads has
//!   covered so far, up to [`MAX_WINDOW`], in requests of up to [`MAX_REQUEST`]; a read elsewhere closes
//!   it. So a large file read lazily streams at the link's speed instead of paying a round
//!   trip per chunk, and small or random reads fetch little more than they need.
//! * **Exact metadata reads.** What a layer reads once when it opens (headers, the jump table,
//!   the index: [`ReadAt::read_meta_at`]) is fetched as just those bytes, rounded to
//!   [`META_GRANULE`], not as whole chunks; the last few such ranges are kept in memory for the
//!   reads of neighbouring metadata, and of data, that fall inside them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::cache::{BlobCache, Claim, Lead};
use super::registry::RegistryClient;
use crate::io::{LocalFile, ReadAt};
use crate::{Error, Result};

/// Bytes per fetch when there is no cache.
const UNCACHED_CHUNK: u64 = 256 << 10;
/// The largest read-ahead window, bytes.
pub const MAX_WINDOW: u64 = 2 << 20;
/// The largest read-ahead request, bytes.
pub const MAX_REQUEST: u64 = 512 << 10;
/// Metadata reads fetch whole multiples of this, aligned, bytes.
pub const META_GRANULE: u64 = 16 << 10;
/// Metadata bytes kept in memory per blob, at most.
const META_KEPT: usize = 1 << 20;
/// Read-ahead requests in flight per blob, at most.
const MAX_AHEAD_IN_FLIGHT: usize = 4;

/// What fetches chunks: shared with read-ahead threads.
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

    fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size())
    }

    /// Fetches chunks `first..` (one request) and completes `leads` (one per chunk, in order)
    /// as their bytes arrive; the leads left when the request fails are dropped, which fails
    /// their waiters.
    fn fetch_run(&self, first: u64, leads: Vec<Lead<'_>>) -> Result<Vec<Arc<Vec<u8>>>> {
        let cs = self.chunk_size();
        let start = first * cs;
        let len = (leads.len() as u64 * cs).min(self.size - start);
        let mut leads = leads.into_iter();
        let mut out = Vec::with_capacity(leads.len());
        let mut failed = None;
        let r = self.client.read_range_pieces(&self.repo_blob_url, &self.digest, start, len, cs as usize, &mut |p| {
            if let Some(lead) = leads.next() {
                match lead.complete(Ok(p)) {
                    Ok(d) => out.push(d),
                    Err(e) => failed = Some(e),
                }
            }
        });
        r?;
        failed.map_or(Ok(out), Err)
    }

    /// Chunks `first..=last` in order: cached ones from the cache, the others fetched with
    /// one request per run of consecutive missing chunks; chunks another thread is fetching
    /// are waited for.
    fn chunks(&self, first: u64, last: u64) -> Result<Vec<Arc<Vec<u8>>>> {
        let cs = self.chunk_size();
        let Some(cache) = &self.cache else {
            let start = first * cs;
            let len = ((last + 1) * cs).min(self.size) - start;
            let mut out = Vec::new();
            self.client.read_range_pieces(&self.repo_blob_url, &self.digest, start, len, cs as usize, &mut |p| {
                out.push(Arc::new(p))
            })?;
            return Ok(out);
        };
        enum Slot<'a> {
            Ready(Arc<Vec<u8>>),
            Wait(super::cache::Waiter),
            Run(u64, Vec<Lead<'a>>),
        }
        let mut slots: Vec<Slot<'_>> = Vec::new();
        for i in first..=last {
            match cache.claim(&self.digest, i) {
                Claim::Cached(d) => slots.push(Slot::Ready(d)),
                Claim::Wait(w) => slots.push(Slot::Wait(w)),
                Claim::Fetch(lead) => match slots.last_mut() {
                    Some(Slot::Run(_, leads)) => leads.push(lead),
                    _ => slots.push(Slot::Run(i, vec![lead])),
                },
            }
        }
        // our fetches first (others may wait for them), then what others fetch
        let mut fetched = Vec::new();
        for s in slots.iter_mut() {
            if let Slot::Run(at, leads) = s {
                fetched.push(self.fetch_run(*at, std::mem::take(leads))?);
            }
        }
        let mut fetched = fetched.into_iter();
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        for s in slots {
            match s {
                Slot::Ready(d) => out.push(d),
                Slot::Wait(w) => out.push(w.wait()?),
                Slot::Run(..) => out.extend(fetched.next().unwrap_or_default()),
            }
        }
        Ok(out)
    }

    /// Read-ahead of chunks `first..=last`: what is neither cached nor being fetched, in
    /// requests of at most [`MAX_REQUEST`]; nothing is waited for.
    fn fetch_ahead(&self, first: u64, last: u64) -> Result<()> {
        let Some(cache) = &self.cache else { return Ok(()) };
        let per_request = (MAX_REQUEST / self.chunk_size()).max(1) as usize;
        let mut run: Option<(u64, Vec<Lead<'_>>)> = None;
        for i in first..=last {
            let lead = if cache.contains(&self.digest, i) {
                None
            } else {
                match cache.claim(&self.digest, i) {
                    Claim::Fetch(l) => Some(l),
                    Claim::Cached(_) | Claim::Wait(_) => None,
                }
            };
            match (lead, &mut run) {
                (Some(l), Some((_, leads))) if leads.len() < per_request => leads.push(l),
                (Some(l), _) => {
                    if let Some((at, leads)) = run.replace((i, vec![l])) {
                        self.fetch_run(at, leads)?;
                    }
                }
                (None, _) => {
                    if let Some((at, leads)) = run.take() {
                        self.fetch_run(at, leads)?;
                    }
                }
            }
        }
        if let Some((at, leads)) = run {
            self.fetch_run(at, leads)?;
        }
        Ok(())
    }
}

/// The read-ahead state of a blob.
#[derive(Default)]
struct Ahead {
    /// The furthest end of the current run of reads (`None` before the first read).
    last_end: Option<u64>,
    /// Bytes covered by the current run of reads that follow one another.
    streak: u64,
    /// Chunks before this one are fetched or being fetched.
    scheduled_to: u64,
}

/// A remote blob of known size.
pub struct RemoteBlob {
    fetcher: Arc<Fetcher>,
    name: String,
    ahead: Mutex<Ahead>,
    /// The downloaded copy, once there is one: reads go there.
    local: RwLock<Option<Arc<LocalFile>>>,
    /// Ranges fetched by metadata reads (offset, bytes), newest last.
    meta: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
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
            ahead: Mutex::new(Ahead::default()),
            local: RwLock::new(None),
            meta: Mutex::default(),
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

    /// Notes a read of `offset..end`: a read near the end of the current run (readers run side
    /// by side, so reads arrive a little out of order) extends the run and the window (as many
    /// whole chunks as the run covered); a read elsewhere starts a new run with no window. Then starts fetching the next part of the window in the background.
    fn read_ahead(&self, offset: u64, end: u64) {
        let f = &self.fetcher;
        if f.cache.is_none() {
            return;
        }
        let cs = f.chunk_size();
        let (from, to) = {
            let mut a = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            // (readers run side by side: reads of one run arrive a little out of order)
            let slack = MAX_REQUEST.max(4 * cs);
            let frontier = match a.last_end {
                Some(l) if offset <= l + slack && end + slack >= l => l.max(end),
                _ => {
                    *a = Ahead { last_end: Some(end), streak: end - offset, scheduled_to: 0 };
                    return;
                }
            };
            a.last_end = Some(frontier);
            a.streak += end - offset;
            // whole chunks only: reads that together cover less than a chunk (file-system
            // metadata, a small file) fetch nothing ahead
            let window = a.streak.min(MAX_WINDOW) / cs;
            if window == 0 {
                return;
            }
            let next = frontier.div_ceil(cs);
            let to = (next + window).min(f.chunk_count());
            let from = next.max(a.scheduled_to);
            if from >= to {
                return;
            }
            // one request's worth at a time, a few requests in flight
            let to = to.min(from + (MAX_REQUEST / cs).max(1));
            if f.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_AHEAD_IN_FLIGHT {
                f.in_flight.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            a.scheduled_to = to;
            (from, to)
        };
        let f2 = f.clone();
        let spawned = std::thread::Builder::new().name("obd-readahead".into()).spawn(move || {
            if let Err(e) = f2.fetch_ahead(from, to - 1) {
                tracing::debug!(from, to, error = %e, "read-ahead failed (readers will fetch)");
            }
            f2.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            f.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.ahead.lock().unwrap_or_else(|p| p.into_inner()).scheduled_to = from;
        }
    }

    /// Copies `buf.len()` bytes at `offset` from a kept metadata range, if one holds them all.
    fn kept_meta(&self, buf: &mut [u8], offset: u64) -> bool {
        let meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset + buf.len() as u64;
        let Some((at, bytes)) = meta.iter().find(|(at, b)| *at <= offset && end <= at + b.len() as u64) else {
            return false;
        };
        let from = (offset - at) as usize;
        buf.copy_from_slice(&bytes[from..from + buf.len()]);
        true
    }

    /// From now on, reads come from `local` (the verified downloaded copy).
    pub fn switch_to_local(&self, local: Arc<LocalFile>) {
        *self.local.write().unwrap_or_else(|p| p.into_inner()) = Some(local);
    }

    /// True once reads come from a local copy.
    pub fn is_local(&self) -> bool {
        self.local.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Read-ahead fetches started and not over yet (their chunks not all in the cache yet).
    /// Read-ahead runs on threads of its own, which outlive the read that started them, and
    /// the blob too: 0 here means every one started so far has ended.
    pub fn read_ahead_in_flight(&self) -> usize {
        self.fetcher.in_flight.load(Ordering::Acquire)
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
        if n == 0 {
            return Ok(0);
        }
        // bytes a metadata read fetched (the end of the data is fetched with the jump table)
        if self.kept_meta(&mut buf[..n], offset) {
            return Ok(n);
        }
        let cs = self.fetcher.chunk_size();
        self.read_ahead(offset, offset + n as u64);
        let (first, last) = (offset / cs, (offset + n as u64 - 1) / cs);
        let chunks = self.fetcher.chunks(first, last)?;
        let mut done = 0usize;
        for (k, chunk) in chunks.into_iter().enumerate() {
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
        if done != n {
            return Err(Error::Truncated {
                file: self.name.clone(),
                what: format!("chunks {first}..={last}"),
                offset: offset + done as u64,
                end: offset + n as u64,
                size,
            });
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.fetcher.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_meta_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        let f = &self.fetcher;
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= f.size);
        let Some(end) = end.filter(|&e| e > offset) else { return self.read_exact_at(buf, offset, what) };
        let cs = f.chunk_size();
        let cached = f.cache.as_ref().is_some_and(|c| (offset / cs..=(end - 1) / cs).all(|i| c.contains(&f.digest, i)));
        if cached || self.is_local() {
            return self.read_exact_at(buf, offset, what);
        }
        if self.kept_meta(buf, offset) {
            return Ok(());
        }
        let from = offset / META_GRANULE * META_GRANULE;
        let to = end.div_ceil(META_GRANULE).saturating_mul(META_GRANULE).min(f.size);
        let len = (to - from) as usize;
        // from the cache, or shared with another opening of the layer (the warm-up at pull)
        let bytes: Arc<Vec<u8>> = match f.cache.as_ref().map(|c| c.claim_extent(&f.digest, from, to - from)) {
            Some(Claim::Cached(b)) => b,
            Some(Claim::Wait(w)) => match w.wait() {
                Ok(b) => b,
                Err(_) => Arc::new(self.fetch_uncached(from, len)?),
            },
            Some(Claim::Fetch(lead)) => lead.complete(self.fetch_uncached(from, len))?,
            None => Arc::new(self.fetch_uncached(from, len)?),
        };
        if (bytes.len() as u64) < end - from {
            return Err(Error::Truncated {
                file: self.name.clone(),
                what: what.to_string(),
                offset,
                end,
                size: f.size,
            });
        }
        buf.copy_from_slice(&bytes[(offset - from) as usize..(end - from) as usize]);
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        meta.push_back((from, bytes));
        while meta.iter().map(|(_, b)| b.len()).sum::<usize>() > META_KEPT {
            meta.pop_front();
        }
        Ok(())
    }

    fn invalidate(&self, offset: u64, len: u64) -> bool {
        let cache = self.fetcher.cache.as_ref();
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).retain(|(at, b)| {
            let keep = at + b.len() as u64 <= offset || offset + len <= *at;
            if !keep {
                if let Some(c) = cache {
                    c.drop_extent(&self.fetcher.digest, *at, b.len() as u64);
                }
            }
            keep
        });
        let Some(c) = cache else { return true }; // uncached: a new read fetches anew
        let cs = c.chunk_size();
        for i in offset / cs..=(offset + len.max(1) - 1) / cs {
            c.drop_chunk(&self.fetcher.digest, i);
        }
        true
    }
}
