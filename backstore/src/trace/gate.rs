//! On-demand reads go first: the stack counts its foreground lower reads in flight, and
//! prefetch workers wait while there are any.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How long a waiting worker sleeps before looking at the cancel flag again.
const RECHECK: Duration = Duration::from_millis(50);

/// Counts foreground reads in flight.
#[derive(Default)]
pub struct Gate {
    busy: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
    /// Callers inside [`Gate::wait_idle`]'s wait now (for the tests to know a worker waits).
    #[cfg(test)]
    waiting: AtomicUsize,
}

/// A foreground read in flight; dropping it ends the read.
pub struct Foreground<'a>(&'a Gate);

impl Gate {
    /// Marks a foreground read as started.
    pub fn enter(&self) -> Foreground<'_> {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Foreground(self)
    }

    /// Foreground reads in flight now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// Waits until no foreground read is in flight or `cancel` is set; true if it had to wait.
    pub fn wait_idle(&self, cancel: &AtomicBool) -> bool {
        if self.busy() == 0 {
            return false;
        }
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(test)]
        self.waiting.fetch_add(1, Ordering::AcqRel);
        while self.busy() > 0 && !cancel.load(Ordering::Acquire) {
            g = self.idle.wait_timeout(g, RECHECK).unwrap_or_else(|p| p.into_inner()).0;
        }
        #[cfg(test)]
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Callers inside [`Gate::wait_idle`]'s wait now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Wakes the waiters (after a cancel).
    pub fn wake_all(&self) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.idle.notify_all();
    }
}

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            // taking the lock orders this notify after a waiter's check of `busy`
            let _g = self.0.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Waits (at most a minute) until `cond` holds.
    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn workers_wait_for_foreground_reads() {
        let gate = Arc::new(Gate::default());
        let cancel = Arc::new(AtomicBool::new(false));
        assert!(!gate.wait_idle(&cancel));
        let fg = gate.enter();
        let released = Arc::new(AtomicBool::new(false));
        let (g2, c2, r2) = (gate.clone(), cancel.clone(), released.clone());
        let t = std::thread::spawn(move || {
            let waited = g2.wait_idle(&c2);
            (waited, r2.load(Ordering::Acquire))
        });
        // the worker waits (inside the wait, with the foreground read in flight) before it ends
        wait_until("the worker to wait", || gate.waiting() == 1);
        released.store(true, Ordering::Release);
        drop(fg);
        let (waited, after_release) = t.join().unwrap();
        assert!(waited, "a worker that waited says it did not");
        assert!(after_release, "woke while a foreground read was in flight");
        // a cancel ends the wait too
        let _fg = gate.enter();
        let (g2, c2) = (gate.clone(), cancel.clone());
        let t = std::thread::spawn(move || g2.wait_idle(&c2));
        wait_until("the worker to wait again", || gate.waiting() == 1);
        cancel.store(true, Ordering::Release);
        gate.wake_all();
        assert!(t.join().unwrap());
    }
}
