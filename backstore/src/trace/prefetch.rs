//! The prefetch workers: N threads read the planned [`Job`]s, in order, through the lowers'
//! sources (ZFile, remote blob, chunk cache), so that the device's later reads find the bytes
//! cached. The bytes read are dropped: prefetch only warms caches, it never changes what the
//! device reads. Workers wait while on-demand reads are in flight ([`Gate`]), and stop after
//! their current read when the prefetch is cancelled (the stack is dropped); cancelling joins
//! them.
//!
//! One coordinator thread makes the plan (a priority list is resolved there, off the device's
//! open path), starts the workers and joins them; the [`Prefetcher`] joins the coordinator.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::gate::Gate;
use super::plan::Job;
use crate::io::ReadAt;

/// The name prefix of the coordinator and worker threads.
pub const THREAD_PREFIX: &str = "obd-prefetch";

/// What a prefetch reads: its reads and the number of records (or ranges) they cover. Made on
/// the coordinator thread; it may look at the cancel flag to stop early.
pub type Plan = Box<dyn FnOnce(&AtomicBool) -> crate::Result<(Vec<Job>, usize)> + Send>;

/// What a prefetch has done so far (shared with the workers, readable after the stack is gone).
#[derive(Debug, Default)]
pub struct PrefetchProgress {
    records_total: AtomicUsize,
    reads_total: AtomicUsize,
    records_done: AtomicUsize,
    reads_done: AtomicUsize,
    reads_failed: AtomicUsize,
    bytes: AtomicU64,
    yields: AtomicU64,
    cancelled: AtomicBool,
    finished: AtomicBool,
}

/// A snapshot of [`PrefetchProgress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Records (ranges of a priority list) to prefetch; 0 until the plan is made.
    pub records_total: usize,
    /// Records whose reads are done.
    pub records_done: usize,
    /// Reads planned.
    pub reads_total: usize,
    /// Reads done (failed ones included).
    pub reads_done: usize,
    /// Reads that failed (logged; the device reads those bytes on demand).
    pub reads_failed: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Times a worker waited for on-demand reads before its next read.
    pub yields: u64,
    /// Stopped before the end because the device closed.
    pub cancelled: bool,
    /// Every worker has exited.
    pub finished: bool,
}

impl PrefetchProgress {
    /// The counters now.
    pub fn stats(&self) -> PrefetchStats {
        PrefetchStats {
            records_total: self.records_total.load(Ordering::Acquire),
            records_done: self.records_done.load(Ordering::Acquire),
            reads_total: self.reads_total.load(Ordering::Acquire),
            reads_done: self.reads_done.load(Ordering::Acquire),
            reads_failed: self.reads_failed.load(Ordering::Acquire),
            bytes: self.bytes.load(Ordering::Acquire),
            yields: self.yields.load(Ordering::Acquire),
            cancelled: self.cancelled.load(Ordering::Acquire),
            finished: self.finished.load(Ordering::Acquire),
        }
    }

    /// Waits up to `limit` for the workers to finish; true if they did.
    pub fn wait_finished(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while !self.finished.load(Ordering::Acquire) {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

struct Shared {
    jobs: OnceLock<Vec<Job>>,
    sources: Vec<Arc<dyn ReadAt>>,
    next: AtomicUsize,
    cancel: AtomicBool,
    gate: Arc<Gate>,
    progress: Arc<PrefetchProgress>,
    what: String,
    started: Instant,
}

/// A running prefetch. Dropping it cancels it and joins its threads.
pub struct Prefetcher {
    shared: Arc<Shared>,
    coordinator: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts a prefetch of `plan` with `concurrency` workers (at least 1, at most one per
    /// read) reading through `sources` (one per lower, by layer number); they yield to reads
    /// counted by `gate`. `what` names the trace in logs, which go to the caller's subscriber.
    pub fn start(what: &str, plan: Plan, sources: Vec<Arc<dyn ReadAt>>, gate: Arc<Gate>, concurrency: usize) -> Self {
        let shared = Arc::new(Shared {
            jobs: OnceLock::new(),
            sources,
            next: AtomicUsize::new(0),
            cancel: AtomicBool::new(false),
            gate,
            progress: Arc::default(),
            what: what.to_string(),
            started: Instant::now(),
        });
        let s = shared.clone();
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let coordinator = std::thread::Builder::new()
            .name(format!("{THREAD_PREFIX}-plan"))
            .spawn(move || tracing::dispatcher::with_default(&dispatch, || coordinate(&s, plan, concurrency)));
        let coordinator = match coordinator {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(trace = what, error = %e, "cannot start the prefetch");
                shared.progress.finished.store(true, Ordering::Release);
                None
            }
        };
        Prefetcher { shared, coordinator }
    }

    /// Starts a prefetch of `jobs`, planned already.
    pub fn start_jobs(
        what: &str,
        jobs: Vec<Job>,
        records: usize,
        sources: Vec<Arc<dyn ReadAt>>,
        gate: Arc<Gate>,
        concurrency: usize,
    ) -> Self {
        Self::start(what, Box::new(move |_| Ok((jobs, records))), sources, gate, concurrency)
    }

    /// The progress counters.
    pub fn progress(&self) -> &Arc<PrefetchProgress> {
        &self.shared.progress
    }

    /// Stops the workers after their current read and joins every thread of the prefetch.
    pub fn cancel(&mut self) {
        let s = &self.shared;
        if !s.progress.finished.load(Ordering::Acquire) {
            s.cancel.store(true, Ordering::Release);
            s.gate.wake_all();
        }
        if let Some(h) = self.coordinator.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Makes the plan, runs the workers, joins them, and reports.
fn coordinate(s: &Arc<Shared>, plan: Plan, concurrency: usize) {
    let p = &s.progress;
    match plan(&s.cancel) {
        Ok((jobs, records)) => {
            p.records_total.store(records, Ordering::Release);
            p.reads_total.store(jobs.len(), Ordering::Release);
            let _ = s.jobs.set(jobs);
        }
        Err(e) => tracing::warn!(trace = %s.what, reason = %e, "trace ignored: no prefetch"),
    }
    let n_jobs = s.jobs.get().map_or(0, Vec::len);
    if n_jobs > 0 && !s.cancel.load(Ordering::Acquire) {
        let n = concurrency.clamp(1, n_jobs);
        tracing::info!(trace = %s.what, records = p.records_total.load(Ordering::Acquire), reads = n_jobs, workers = n,
            "prefetch started");
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let s2 = s.clone();
            match std::thread::Builder::new().name(format!("{THREAD_PREFIX}-{i}")).spawn(move || work(&s2)) {
                Ok(h) => workers.push(h),
                Err(e) => tracing::warn!(error = %e, "cannot start a prefetch worker"),
            }
        }
        for h in workers {
            let _ = h.join();
        }
    }
    let cancelled = s.cancel.load(Ordering::Acquire) && p.reads_done.load(Ordering::Acquire) < n_jobs;
    p.cancelled.store(cancelled, Ordering::Release);
    let st = p.stats();
    tracing::info!(trace = %s.what, records = st.records_done, of = st.records_total, bytes = st.bytes,
        failed = st.reads_failed, cancelled, secs = s.started.elapsed().as_secs_f64(), "prefetch ended");
    p.finished.store(true, Ordering::Release);
}

fn work(s: &Shared) {
    let mut buf = Vec::new();
    loop {
        if s.cancel.load(Ordering::Acquire) {
            break;
        }
        if s.gate.wait_idle(&s.cancel) {
            s.progress.yields.fetch_add(1, Ordering::Relaxed);
            if s.cancel.load(Ordering::Acquire) {
                break;
            }
        }
        let i = s.next.fetch_add(1, Ordering::AcqRel);
        let Some(job) = s.jobs.get().and_then(|j| j.get(i)) else { break };
        let Some(src) = s.sources.get(job.layer) else { continue };
        buf.resize(job.len as usize, 0);
        match read_fully(src.as_ref(), &mut buf, job.offset) {
            Ok(n) => {
                s.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                s.progress.reads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(trace = %s.what, layer = job.layer, offset = job.offset, len = job.len, error = %e,
                    "a prefetch read failed (the device reads those bytes on demand)");
            }
        }
        s.progress.records_done.fetch_add(job.records, Ordering::AcqRel);
        s.progress.reads_done.fetch_add(1, Ordering::AcqRel);
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_fully(src: &dyn ReadAt, buf: &mut [u8], offset: u64) -> crate::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = src.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A source that logs its reads; those after the first `free` wait until `open` is set.
    struct Logged {
        reads: Mutex<Vec<(u64, usize)>>,
        free: usize,
        open: AtomicBool,
    }

    impl Logged {
        fn new(free: usize) -> Arc<Self> {
            Arc::new(Logged { reads: Mutex::new(Vec::new()), free, open: AtomicBool::new(false) })
        }

        fn reads(&self) -> usize {
            self.reads.lock().unwrap().len()
        }
    }

    impl ReadAt for Logged {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<usize> {
            let n = {
                let mut r = self.reads.lock().unwrap();
                r.push((offset, buf.len()));
                r.len()
            };
            if n > self.free {
                wait_until("the source to be opened", || self.open.load(Ordering::Acquire));
            }
            buf.fill(7);
            Ok(buf.len())
        }
        fn size(&self) -> u64 {
            1 << 40
        }
        fn name(&self) -> &str {
            "logged"
        }
    }

    /// Waits (at most a minute) until `cond` holds.
    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn jobs(n: u64) -> Vec<Job> {
        (0..n).map(|i| Job { layer: 0, offset: 4096 * (i + 1), len: 4096, records: 1 }).collect()
    }

    #[test]
    fn one_worker_reads_in_recorded_order() {
        let src = Logged::new(usize::MAX);
        let p = Prefetcher::start_jobs("t", jobs(50), 50, vec![src.clone()], Arc::default(), 1);
        assert!(p.progress().wait_finished(Duration::from_secs(120)));
        let st = p.progress().stats();
        assert_eq!((st.records_done, st.reads_done, st.bytes, st.cancelled), (50, 50, 50 * 4096, false));
        let got: Vec<u64> = src.reads.lock().unwrap().iter().map(|r| r.0).collect();
        assert_eq!(got, (1..=50).map(|i| i * 4096).collect::<Vec<_>>());
    }

    #[test]
    fn waits_for_foreground_reads_and_stops_when_cancelled() {
        // one read goes through at once, the others wait until the test lets them
        let src = Logged::new(1);
        let gate = Arc::new(Gate::default());
        let fg = gate.enter();
        let mut p = Prefetcher::start_jobs("t", jobs(10_000), 10_000, vec![src.clone()], gate.clone(), 4);
        // all four workers wait at the gate: none reads while the on-demand read is in flight
        wait_until("the workers to wait for the on-demand read", || gate.waiting() == 4);
        assert_eq!(src.reads(), 0, "read while an on-demand read was in flight");
        drop(fg);
        wait_until("a prefetch read", || src.reads() > 0);
        // cancelled with its workers in a read (or about to start one): each stops after it
        let progress = p.progress().clone();
        let shared = p.shared.clone();
        std::thread::scope(|s| {
            let canceller = s.spawn(|| p.cancel());
            wait_until("the cancel", || shared.cancel.load(Ordering::Acquire));
            src.open.store(true, Ordering::Release);
            canceller.join().unwrap();
        });
        let st = progress.stats();
        assert!(st.cancelled && st.finished, "{st:?}");
        // the free read, then at most one more per worker (begun before it saw the cancel)
        assert!(st.records_done <= 1 + 4 && src.reads() <= 1 + 4, "{st:?}, {} reads", src.reads());
        assert_eq!(st.yields, 4, "each worker waited once, for the on-demand read: {st:?}");
    }
}
