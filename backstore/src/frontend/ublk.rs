//! The ublk frontend (Linux 6.0+ `ublk_drv`) through the `libublk` crate: one thread per
//! hardware queue, each serving its tags synchronously against the shared [`BlockDevice`].
//! Writable devices advertise discard and write-zeroes; read-only ones the read-only attribute.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{BufDescList, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, UblkFlags, UblkIORes};

use super::Attached;
use crate::block::BlockDevice;
use crate::{Error, Result};

/// Requests in flight per queue.
const QUEUE_DEPTH: u16 = 64;
/// Largest request, in bytes.
const MAX_IO: u32 = 512 << 10;
/// How long the kernel may take to bring the device up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn ublk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::io("/dev/ublk-control", what, std::io::Error::other(e.to_string()))
}

/// An attached ublk device.
pub struct Ublk {
    dev_id: u32,
    device: PathBuf,
    server: Option<JoinHandle<()>>,
}

impl Ublk {
    /// Adds a ublk device serving `dev` and starts its queues.
    pub fn attach(dev: Arc<dyn BlockDevice>, id: &str) -> Result<Self> {
        let queues = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4) as u16;
        let (tx, rx) = mpsc::channel::<std::result::Result<(u32, String), String>>();
        let name = format!("overlaybd-{id}");
        let server = std::thread::Builder::new()
            .name(format!("ublk-{id}"))
            .spawn(move || {
                let ctrl = match UblkCtrlBuilder::default()
                    .name(&name)
                    .id(-1)
                    .nr_queues(queues)
                    .depth(QUEUE_DEPTH)
                    .io_buf_bytes(MAX_IO)
                    .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
                    .build()
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(format!("adding the ublk device failed: {e}")));
                        return;
                    }
                };
                let size = dev.size();
                let read_only = dev.read_only();
                let tgt_init = move |udev: &mut UblkDev| {
                    udev.set_default_params(size);
                    let p = &mut udev.tgt.params;
                    if read_only {
                        p.basic.attrs |= libublk::sys::UBLK_ATTR_READ_ONLY;
                    } else {
                        p.types |= libublk::sys::UBLK_PARAM_TYPE_DISCARD;
                        p.discard.discard_granularity = 4096;
                        p.discard.max_discard_sectors = u32::MAX >> 9;
                        p.discard.max_write_zeroes_sectors = u32::MAX >> 9;
                        p.discard.max_discard_segments = 1;
                    }
                    Ok(())
                };
                let qdev = dev.clone();
                let q_fn = move |qid: u16, udev: &UblkDev| serve_queue(qid, udev, qdev.as_ref());
                let started = tx.clone();
                let on_start = move |c: &UblkCtrl| {
                    // Nobody waits any more (attach timed out): stop instead of serving an orphan.
                    if started.send(Ok((c.dev_info().dev_id, c.get_bdev_path()))).is_err() {
                        let _ = c.kill_dev();
                    }
                };
                if let Err(e) = ctrl.run_target(tgt_init, q_fn, on_start) {
                    let _ = tx.send(Err(format!("starting the ublk device failed: {e}")));
                }
                let _ = ctrl.del_dev();
            })
            .map_err(|e| Error::io("ublk", "spawn the server thread", e))?;
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok((dev_id, path))) => {
                tracing::info!(device = %path, id, "attached (ublk)");
                Ok(Ublk { dev_id, device: PathBuf::from(path), server: Some(server) })
            }
            Ok(Err(e)) => {
                let _ = server.join();
                Err(ublk_err("add", e))
            }
            Err(_) => Err(ublk_err("add", format!("the device did not start within {START_TIMEOUT:?}"))),
        }
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(server) = self.server.take() else { return Ok(()) };
        // Stopping the device ends the queue threads; run_target then returns and deletes it.
        let ctrl = UblkCtrl::new_simple(self.dev_id as i32).map_err(|e| ublk_err("open", e))?;
        ctrl.kill_dev().map_err(|e| ublk_err("stop", e))?;
        server.join().map_err(|_| ublk_err("stop", "the server thread panicked"))?;
        let _ = ctrl.del_dev();
        Ok(())
    }
}

/// Serves one hardware queue until the device stops.
fn serve_queue(qid: u16, udev: &UblkDev, dev: &dyn BlockDevice) {
    let bufs = udev.alloc_queue_io_bufs();
    let queue = match UblkQueue::new(qid, udev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(queue = qid, error = %e, "ublk queue setup failed");
            return;
        }
    };
    let handler = |q: &UblkQueue, tag: u16, _io: &UblkIOCtx| {
        let iod = q.get_iod(tag);
        let op = iod.op_flags & 0xff;
        let offset = iod.start_sector << 9;
        let len = (iod.nr_sectors as usize) << 9;
        let buf = &bufs[tag as usize];
        let res = if len > buf.len() && (op == libublk::sys::UBLK_IO_OP_READ || op == libublk::sys::UBLK_IO_OP_WRITE) {
            Err(Error::InvalidArgument(format!("request of {len} bytes exceeds the {}-byte buffer", buf.len())))
        } else {
            match op {
                libublk::sys::UBLK_IO_OP_READ => {
                    // SAFETY: between the fetch completion and our commit the kernel leaves this
                    // tag's buffer to us, and only this thread serves the tag; `len` fits the
                    // buffer (checked above).
                    let out = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr(), len) };
                    dev.read_at(out, offset)
                }
                libublk::sys::UBLK_IO_OP_WRITE => dev.write_at(&buf.as_slice()[..len], offset),
                libublk::sys::UBLK_IO_OP_FLUSH => dev.flush(),
                libublk::sys::UBLK_IO_OP_DISCARD | libublk::sys::UBLK_IO_OP_WRITE_ZEROES => {
                    dev.discard(offset, len as u64)
                }
                other => Err(Error::InvalidArgument(format!("unsupported ublk operation {other}"))),
            }
        };
        let result = match res {
            Ok(()) => len as i32,
            Err(e) => {
                tracing::error!(op, offset, len, error = %e, "I/O error");
                -e.errno()
            }
        };
        if let Err(e) = q.complete_io_cmd_unified(tag, BufDesc::Slice(buf.as_slice()), Ok(UblkIORes::Result(result))) {
            tracing::error!(tag, error = %e, "completing a ublk command failed");
        }
    };
    queue.wait_and_handle_io(handler);
}

impl Attached for Ublk {
    fn device_path(&self) -> &Path {
        &self.device
    }

    fn detach(mut self: Box<Self>) -> Result<()> {
        self.teardown()
    }
}

impl Drop for Ublk {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "detaching the ublk device failed");
        }
    }
}

/// Stops and deletes ublk devices whose server process is gone (left by a killed instance: the
/// kernel fails their I/O but keeps them until deleted). A disk still mounted goes away when it
/// is unmounted. Returns what it removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut done = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/ublk-char") else { return done };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("ublkc").and_then(|n| n.parse::<i32>().ok()) else { continue };
        // Asynchronous delete (Linux 6.9+): a synchronous one waits until every user of the
        // disk is gone, which hangs while a filesystem on it is still mounted.
        let ctrl = match UblkCtrl::new(None, id, 0, 0, 0, 0, 0, UblkFlags::UBLK_DEV_F_DEL_DEV_ASYNC) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot open a ublk device to check it");
                continue;
            }
        };
        let pid = ctrl.dev_info().ublksrv_pid;
        if pid > 0 && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = ctrl.kill_dev();
        match ctrl.del_dev() {
            Ok(_) => done.push(format!("deleted ublk device {id} (its server is gone)")),
            Err(e) => tracing::warn!(id, error = %e, "cannot delete a stale ublk device"),
        }
    }
    done
}
