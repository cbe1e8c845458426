//! Serving one TCMU device: a dispatcher thread owns the ring (takes commands off it, writes
//! responses into it) and a few worker threads execute the commands against the device, so a
//! slow read does not hold up the others.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::ring::{Command, Entry, Response, Ring};
use super::scsi::{self, DataBuf, LunInfo, Sense};
use crate::block::BlockDevice;
use crate::{Error, Result};

/// How long a stopping handler waits for commands in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What executes the commands of a device.
pub trait Executor: Send + Sync {
    /// Executes `cdb`; `Ok` is GOOD status.
    fn execute(&self, cdb: &[u8], data: &mut DataBuf<'_>) -> std::result::Result<(), Sense>;
}

/// Serves the SCSI commands against a block device.
pub struct DeviceExecutor {
    /// The device.
    pub dev: Arc<dyn BlockDevice>,
    /// What it reports about itself.
    pub lun: LunInfo,
}

impl Executor for DeviceExecutor {
    fn execute(&self, cdb: &[u8], data: &mut DataBuf<'_>) -> std::result::Result<(), Sense> {
        scsi::execute(cdb, data, self.dev.as_ref(), &self.lun)
    }
}

/// Fails every command: serves a device whose process is gone while it is torn down, so the
/// kernel's last commands (the cache flush of the departing disk) end at once instead of
/// waiting for the command timeout.
pub struct DeadExecutor;

impl Executor for DeadExecutor {
    fn execute(&self, _: &[u8], _: &mut DataBuf<'_>) -> std::result::Result<(), Sense> {
        Err(Sense::LUN_FAILURE)
    }
}

/// A running handler.
pub struct Handler {
    wake: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    dispatcher: Option<JoinHandle<()>>,
}

impl Handler {
    /// Starts serving `ring` with `workers` worker threads named after `id`.
    pub fn start(ring: Ring, exec: Arc<dyn Executor>, workers: usize, id: &str) -> Result<Self> {
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| Error::io("eventfd", "create", e.into()))?,
        );
        let stopping = Arc::new(AtomicBool::new(false));
        let ring = Arc::new(ring);
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        let (done_tx, done_rx) = mpsc::channel::<Response>();
        let cmd_rx = Arc::new(Mutex::new(cmd_rx));
        let mut pool = Vec::new();
        for n in 0..workers.max(1) {
            let (ring, exec, cmd_rx, done_tx, wake) =
                (ring.clone(), exec.clone(), cmd_rx.clone(), done_tx.clone(), wake.clone());
            let t = std::thread::Builder::new()
                .name(format!("tcmu-{id}-{n}"))
                .spawn(move || worker(&ring, exec.as_ref(), &cmd_rx, &done_tx, &wake))
                .map_err(|e| Error::io("tcmu", "spawn a worker", e))?;
            pool.push(t);
        }
        drop(done_tx);
        let (w, s, name) = (wake.clone(), stopping.clone(), id.to_string());
        let dispatcher = std::thread::Builder::new()
            .name(format!("tcmu-{id}"))
            .spawn(move || {
                if let Err(e) = dispatch(&ring, cmd_tx, &done_rx, &w, &s) {
                    tracing::error!(id = %name, error = %e, "the TCMU ring failed; the device stops answering");
                }
                for t in pool {
                    let _ = t.join();
                }
            })
            .map_err(|e| Error::io("tcmu", "spawn the dispatcher", e))?;
        Ok(Handler { wake, stopping, dispatcher: Some(dispatcher) })
    }

    /// Stops after the commands in flight finish (at most [`DRAIN_TIMEOUT`]).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        if let Some(t) = self.dispatcher.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(ring: &Ring, exec: &dyn Executor, cmds: &Mutex<Receiver<Command>>, done: &Sender<Response>, wake: &EventFd) {
    loop {
        let cmd = match cmds.lock() {
            Ok(rx) => match rx.recv() {
                Ok(c) => c,
                Err(_) => return,
            },
            Err(_) => return,
        };
        // SAFETY: the mapping lives as long as `ring`, which outlives this loop; `cmd` was just
        // taken off the ring and is completed only after this worker sends its response below,
        // when the slices are gone; only this worker has it.
        let result = match unsafe { data_segments(ring.base(), ring.len(), &cmd.iovs) } {
            Some(segs) => exec.execute(&cmd.cdb, &mut DataBuf::new(segs)),
            None => {
                tracing::error!(id = cmd.id, iovs = ?cmd.iovs, "command data outside the ring mapping");
                Err(Sense::INVALID_FIELD_IN_CDB)
            }
        };
        let resp = match result {
            Ok(()) => Response { id: cmd.id, status: 0, sense: Vec::new() },
            Err(s) => {
                tracing::debug!(id = cmd.id, cdb = ?&cmd.cdb[..cmd.cdb.len().min(16)], sense = ?s, "CHECK CONDITION");
                Response { id: cmd.id, status: scsi::CHECK_CONDITION, sense: s.fixed().to_vec() }
            }
        };
        if done.send(resp).is_err() {
            return;
        }
        let _ = wake.write(1);
    }
}

/// The command's data buffers as slices of the ring's mapping, or `None` if one lies outside it.
///
/// # Safety
/// `base` and `map_len` must describe a mapping that outlives `'a`; `iovs` must be the data
/// buffers of one command that is not yet completed, and no one else may access them while the
/// slices live (the kernel hands each command its own data blocks until it is completed).
unsafe fn data_segments<'a>(base: *mut u8, map_len: usize, iovs: &[(usize, usize)]) -> Option<Vec<&'a mut [u8]>> {
    let mut segs = Vec::with_capacity(iovs.len());
    for &(off, len) in iovs {
        if off.checked_add(len)? > map_len {
            return None;
        }
        // SAFETY: the range is inside the mapping (checked above), which outlives `'a`;
        // exclusive access is the caller's contract.
        segs.push(unsafe { std::slice::from_raw_parts_mut(base.add(off), len) });
    }
    Some(segs)
}

/// Takes commands off the ring and writes responses back until stopped.
fn dispatch(
    ring: &Ring,
    cmds: Sender<Command>,
    done: &Receiver<Response>,
    wake: &EventFd,
    stopping: &AtomicBool,
) -> Result<()> {
    let mut next = ring.tail();
    let mut tail = next;
    let mut in_flight = 0usize;
    let mut stop_deadline: Option<Instant> = None;
    loop {
        // Commands queued before the device was opened raise no event: always look first.
        let head = ring.head();
        while next != head {
            let (entry, after) = ring.entry(next)?;
            if let Entry::Command(c) = entry {
                in_flight += 1;
                if cmds.send(c).is_err() {
                    return Err(Error::InvalidArgument("the TCMU workers are gone".into()));
                }
            }
            next = after;
        }
        let mut completed = false;
        while let Ok(r) = done.try_recv() {
            tail = ring.complete(tail, &r)?;
            in_flight -= 1;
            completed = true;
        }
        if in_flight == 0 && tail != next {
            tail = next; // only padding and task-management entries are left
            completed = true;
        }
        if completed {
            ring.set_tail(tail);
            ring.kick()?;
        }
        if stopping.load(Ordering::Acquire) {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
            if in_flight == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(in_flight, "stopping with commands still running; the kernel will time them out");
                return Ok(());
            }
        }
        let mut fds =
            [PollFd::new(ring.file().as_fd(), PollFlags::POLLIN), PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(500u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::io("tcmu", "poll", e.into())),
        }
        ring.ack_event();
        let _ = wake.read();
    }
}
