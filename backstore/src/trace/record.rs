//! Record mode: the lower-layer reads of a device, written to `recordTracePath` when the
//! device closes or when `<path>.lock` disappears (polled about once a second).
//!
//! Repeated reads of ranges already recorded are dropped; the first-read order is kept. The
//! dump is crash-safe: the records go to `<path>.tmp`, which is synced and renamed over the
//! (empty) trace file before `<path>.ok` is created, so a killed process leaves either the
//! empty original without `.ok`, or a complete trace.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::file::{encode, Record};
use crate::{Error, Result};

/// How often the lock file is looked at.
const POLL: Duration = Duration::from_secs(1);

/// `<path><suffix>`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Byte ranges already recorded, per layer: start -> end, disjoint and not touching.
#[derive(Default)]
struct Seen(BTreeMap<(u32, u64), u64>);

impl Seen {
    /// Adds `layer`'s `start..end`; false if it was covered already.
    fn add(&mut self, layer: u32, start: u64, end: u64) -> bool {
        let (mut s, mut e) = (start, end);
        if let Some((&(l, ps), &pe)) = self.0.range(..=(layer, start)).next_back() {
            if l == layer && pe >= end {
                return false;
            }
            if l == layer && pe >= start {
                s = ps;
                e = e.max(pe);
                self.0.remove(&(l, ps));
            }
        }
        let later: Vec<(u64, u64)> = self.0.range((layer, s)..=(layer, e)).map(|(&(_, a), &b)| (a, b)).collect();
        for (a, b) in later {
            e = e.max(b);
            self.0.remove(&(layer, a));
        }
        self.0.insert((layer, s), e);
        true
    }
}

#[derive(Default)]
struct State {
    records: Vec<Record>,
    seen: Seen,
    /// Dumped (or given up): nothing more is recorded.
    done: bool,
    /// The device closed: the watcher stops.
    closing: bool,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    wake: Condvar,
}

/// A running recording. [`Recorder::finish`] (called when the stack is dropped) dumps it.
pub struct Recorder {
    inner: Arc<Inner>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    /// Starts recording into `path` (an existing empty file): creates `<path>.lock` (and
    /// removes a stale `<path>.ok`) and starts the thread that watches the lock.
    pub fn start(path: &Path) -> Result<Recorder> {
        let lock = sibling(path, ".lock");
        let ok = sibling(path, ".ok");
        match std::fs::remove_file(&ok) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(ok.display().to_string(), "remove a stale marker", e))
            }
            _ => {}
        }
        std::fs::File::create(&lock).map_err(|e| Error::io(lock.display().to_string(), "create", e))?;
        let inner =
            Arc::new(Inner { path: path.to_path_buf(), state: Mutex::new(State::default()), wake: Condvar::new() });
        let i2 = inner.clone();
        let watcher = std::thread::Builder::new()
            .name("obd-trace-lock".into())
            .spawn(move || watch(&i2, &lock))
            .map_err(|e| Error::io(path.display().to_string(), "start the trace lock watcher", e))?;
        tracing::info!(path = %path.display(), "recording a trace of lower-layer reads (remove the .lock file to dump it)");
        Ok(Recorder { inner, watcher: Mutex::new(Some(watcher)) })
    }

    /// Notes a read of `count` bytes at byte `offset` of lower `layer`.
    pub fn record(&self, layer: u32, offset: u64, count: u64) {
        let mut st = self.inner.lock();
        if st.done || count == 0 {
            return;
        }
        if st.seen.add(layer, offset, offset.saturating_add(count)) {
            st.records.push(Record::read(layer, offset, count));
        }
    }

    /// Records kept so far.
    pub fn len(&self) -> usize {
        self.inner.lock().records.len()
    }

    /// True if nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the watcher and dumps the trace unless that happened already.
    pub fn finish(&self) {
        {
            let mut st = self.inner.lock();
            st.closing = true;
            self.inner.wake.notify_all();
        }
        if let Some(h) = self.watcher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
        self.inner.dump_once();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Dumps the records once; later calls do nothing.
    fn dump_once(&self) {
        let records = {
            let mut st = self.lock();
            if st.done {
                return;
            }
            st.done = true;
            std::mem::take(&mut st.records)
        };
        match dump(&self.path, &records) {
            Ok(()) => tracing::info!(path = %self.path.display(), records = records.len(), "trace dumped"),
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "cannot dump the trace"),
        }
    }
}

/// Polls the lock file until it disappears (then dumps) or the device closes.
fn watch(inner: &Inner, lock: &Path) {
    let mut st = inner.lock();
    loop {
        if st.closing || st.done {
            return;
        }
        if !lock.exists() {
            drop(st);
            tracing::info!(lock = %lock.display(), "trace lock removed: dumping the trace");
            inner.dump_once();
            return;
        }
        st = inner.wake.wait_timeout(st, POLL).unwrap_or_else(|p| p.into_inner()).0;
    }
}

/// Writes `records` to `<path>.tmp`, syncs it, renames it over `path`, syncs the directory,
/// then creates `<path>.ok`.
pub fn dump(path: &Path, records: &[Record]) -> Result<()> {
    let shown = |p: &Path| p.display().to_string();
    let tmp = sibling(path, ".tmp");
    let bytes = encode(records);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(shown(&tmp), "create", e))?;
    f.write_all(&bytes).map_err(|e| Error::io(shown(&tmp), "write", e))?;
    f.sync_all().map_err(|e| Error::io(shown(&tmp), "fsync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(shown(path), "rename the dumped trace into place", e))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let ok = sibling(path, ".ok");
    let f = std::fs::File::create(&ok).map_err(|e| Error::io(shown(&ok), "create", e))?;
    let _ = f.sync_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::file::decode;

    #[test]
    fn seen_ranges_merge_and_cover() {
        let mut s = Seen::default();
        assert!(s.add(0, 100, 200));
        assert!(!s.add(0, 120, 180));
        assert!(!s.add(0, 100, 200));
        assert!(s.add(1, 120, 180), "other layer");
        assert!(s.add(0, 300, 400));
        assert!(s.add(0, 150, 350), "partly new");
        assert!(!s.add(0, 100, 400), "merged into one");
        assert!(s.add(0, 50, 100));
        assert!(!s.add(0, 50, 400), "touching ranges merge");
        assert_eq!(s.0.len(), 2);
    }

    #[test]
    fn dedups_and_dumps_on_finish_or_when_the_lock_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        std::fs::write(&path, b"").unwrap();
        std::fs::write(sibling(&path, ".ok"), b"").unwrap();
        let r = Recorder::start(&path).unwrap();
        assert!(sibling(&path, ".lock").exists() && !sibling(&path, ".ok").exists());
        r.record(1, 8192, 4096);
        r.record(0, 4096, 512);
        r.record(1, 8192, 4096);
        r.record(1, 8192, 1024);
        assert_eq!(r.len(), 2);
        drop(r);
        let recs = decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(recs, vec![Record::read(1, 8192, 4096), Record::read(0, 4096, 512)]);
        assert!(sibling(&path, ".ok").exists() && !sibling(&path, ".tmp").exists());

        // the lock removed: the watcher dumps; later reads are not recorded
        let path = dir.path().join("trace2");
        std::fs::write(&path, b"").unwrap();
        let r = Recorder::start(&path).unwrap();
        r.record(0, 4096, 4096);
        std::fs::remove_file(sibling(&path, ".lock")).unwrap();
        let ok = sibling(&path, ".ok");
        // (the watcher looks at the lock once a second; the dump makes .ok last)
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !ok.exists() {
            assert!(std::time::Instant::now() < deadline, "no dump after the lock was removed");
            std::thread::sleep(Duration::from_millis(20));
        }
        r.record(0, 1 << 20, 4096);
        drop(r);
        assert_eq!(decode(&std::fs::read(&path).unwrap()).unwrap(), vec![Record::read(0, 4096, 4096)]);
    }
}
