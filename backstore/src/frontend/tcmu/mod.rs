//! The TCMU frontend, in-process: a TCMU device in configfs (`target_core_user`) served by
//! our own ring handler, exposed as a SCSI disk (`/dev/sdX`) through a tcm_loop LUN.
//!
//! * [`configfs`]: the configfs lifecycle and sysfs discovery;
//! * [`ring`]: the uio mailbox and command ring;
//! * [`handler`]: the dispatcher and worker threads of one device;
//! * [`scsi`]: the SCSI commands, emulated over the [`BlockDevice`].
//!
//! Attaching runs: create and enable the device, open its uio and start serving, link the
//! LUN (the kernel probes it at once), find the disk. Detaching: unlink the LUN while still
//! serving (the departing disk flushes its cache), stop serving, remove the device.

pub mod configfs;
pub mod handler;
pub mod ring;
pub mod scsi;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::configfs::Names;
use self::handler::{DeadExecutor, DeviceExecutor, Handler};
use self::ring::Ring;
use super::Attached;
use crate::block::BlockDevice;
use crate::{Error, Result};

/// The HBA the reference uses (`user_999999999`).
pub const HBA: u32 = 999_999_999;
/// The TCMU handler subtype in `dev_config`.
pub const SUBTYPE: &str = "overlaybd";
/// The kernel fails a command the handler has not answered after this long (the reference
/// sets "never", which turns a dead handler into hung processes).
pub const CMD_TIME_OUT_SECS: u32 = 60;
/// The SCSI disk's own command timeout: longer, so the target's answer comes first.
pub const SD_TIMEOUT_SECS: u32 = 90;
/// How long the disk may take to appear after the LUN is linked.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the uio device may take to appear after `enable`.
const UIO_TIMEOUT: Duration = Duration::from_secs(5);
/// The data area for command buffers, in MiB.
const MAX_DATA_AREA_MB: u32 = 16;
/// Worker threads per device.
const WORKERS: usize = 4;

/// An attached TCMU device.
pub struct Tcmu {
    names: Names,
    device: PathBuf,
    handler: Option<Handler>,
    attached: bool,
}

impl Tcmu {
    /// Creates the TCMU device for `dev` under the id `id`, serves it, and links its LUN.
    pub fn attach(dev: Arc<dyn BlockDevice>, id: &str) -> Result<Self> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Error::InvalidArgument(format!("device id {id:?}: use letters, digits, '-' and '_'")));
        }
        let core = Path::new(configfs::TARGET).join("core");
        if !core.exists() || !Path::new("/sys/module/target_core_user").exists() {
            return Err(Error::InvalidArgument(format!(
                "TCMU is not available: needs configfs at {} and the target_core_user and tcm_loop modules \
                 (modprobe target_core_user tcm_loop)",
                core.display()
            )));
        }
        let names = Names::new(HBA, id);
        if names.dev_dir.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} exists: the device is attached already, or left by a killed process (run overlaybd-attach --cleanup)",
                names.dev_dir.display()
            )));
        }
        // From here, dropping `me` on an error tears down what exists.
        let mut me = Tcmu { names, device: PathBuf::new(), handler: None, attached: true };
        configfs::create_device(
            &me.names,
            &format!("{SUBTYPE}/{id}"),
            dev.size(),
            MAX_DATA_AREA_MB,
            scsi::MAX_TRANSFER / 512,
        )?;
        let ring = open_ring(&me.names)?;
        let lun = scsi::LunInfo::new(dev.as_ref(), id);
        me.handler = Some(Handler::start(ring, Arc::new(DeviceExecutor { dev, lun }), WORKERS, id)?);
        configfs::set_cmd_time_out(&me.names, CMD_TIME_OUT_SECS)?;
        configfs::link_lun(&me.names)?;
        me.device = configfs::find_disk(&me.names, DISCOVERY_TIMEOUT, SD_TIMEOUT_SECS)?;
        tracing::info!(device = %me.device.display(), id, wwn = %me.names.wwn, "attached (tcmu)");
        Ok(me)
    }

    fn teardown(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.attached) {
            return Ok(());
        }
        let unlinked = configfs::unlink_lun(&self.names);
        if let Some(h) = self.handler.take() {
            h.stop();
        }
        unlinked?;
        configfs::remove_device(&self.names)
    }
}

/// Waits for the uio device of `n` and maps its ring.
fn open_ring(n: &Names) -> Result<Ring> {
    let deadline = Instant::now() + UIO_TIMEOUT;
    loop {
        if let Some((path, size)) = configfs::find_uio(n)? {
            if path.exists() {
                return Ring::open(&path, size);
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::io(
                n.dev_dir.display().to_string(),
                "find its uio device",
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("none within {UIO_TIMEOUT:?}")),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Attached for Tcmu {
    fn device_path(&self) -> &Path {
        &self.device
    }

    fn detach(mut self: Box<Self>) -> Result<()> {
        self.teardown()
    }
}

impl Drop for Tcmu {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, dev = %self.names.dev_dir.display(), "detaching the TCMU device failed");
        }
    }
}

/// True if a process holds `dev` open.
fn held_open(dev: &Path) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    for p in procs.flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == dev)) {
            return true;
        }
    }
    false
}

/// Tears down the TCMU devices on our HBA whose server process is gone (left by a killed
/// instance): their pending and last commands are failed at once rather than left to time out.
/// Returns what it removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut done = Vec::new();
    let hba_dir = Names::new(HBA, "x").hba_dir;
    let Ok(entries) = std::fs::read_dir(&hba_dir) else { return done };
    for e in entries.flatten() {
        let dir = e.file_name().to_string_lossy().into_owned();
        let Some(id) = dir.strip_prefix("dev_") else { continue };
        let names = Names::new(HBA, id);
        let uio = match configfs::find_uio(&names) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(dev = %dir, error = %e, "cannot inspect a TCMU device");
                continue;
            }
        };
        if let Some((path, _)) = &uio {
            if held_open(path) {
                continue;
            }
        }
        // Serve the orphan with errors while its LUN goes, so nothing waits for a timeout.
        let handler = uio.and_then(|(path, size)| match Ring::open(&path, size) {
            Ok(ring) => Handler::start(ring, Arc::new(DeadExecutor), 1, id).ok(),
            Err(e) => {
                tracing::warn!(dev = %dir, error = %e, "cannot open the ring of a stale TCMU device");
                None
            }
        });
        let unlinked = configfs::unlink_lun(&names);
        if let Some(h) = handler {
            h.stop();
        }
        match unlinked.and_then(|()| configfs::remove_device(&names)) {
            Ok(()) => done.push(format!("removed TCMU device {dir} (its server is gone)")),
            Err(e) => tracing::warn!(dev = %dir, error = %e, "cannot remove a stale TCMU device"),
        }
    }
    done
}
