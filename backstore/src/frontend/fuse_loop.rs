//! The fuse-loop frontend: a FUSE mount holding one file (`disk`) served from the device, and a
//! loop device over that file with direct I/O.
//!
//! Runtime state lives under `<run_dir>/fuse/<id>` (the mount point). After a crash the FUSE
//! mount is dead and the loop device errors; [`cleanup_stale`] detaches and unmounts what a
//! previous process left under `run_dir`.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption};

use super::disk_fs::{DiskFs, DISK_NAME};
use super::loop_dev::{self, LoopDevice, LO_FLAGS_AUTOCLEAR, LO_FLAGS_DIRECT_IO, LO_FLAGS_READ_ONLY};
use super::Attached;
use crate::block::BlockDevice;
use crate::{Error, Result};

/// FUSE worker threads per device.
const FUSE_THREADS: usize = 4;
const FSNAME: &str = "overlaybd";

/// An attached fuse-loop device.
pub struct FuseLoop {
    loop_dev: Option<LoopDevice>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    device: PathBuf,
}

impl FuseLoop {
    /// Mounts the FUSE file for `dev` and attaches a loop device to it.
    pub fn attach(dev: Arc<dyn BlockDevice>, id: &str, run_dir: &Path) -> Result<Self> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(Error::InvalidArgument(format!("device id {id:?} must be a plain name")));
        }
        let mountpoint = run_dir.join("fuse").join(id);
        let mp = mountpoint.display().to_string();
        std::fs::create_dir_all(&mountpoint).map_err(|e| Error::io(&mp, "create the mount point", e))?;
        let read_only = dev.read_only();
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName(format!("{FSNAME}:{id}")), MountOption::Subtype(FSNAME.into())];
        if read_only {
            config.mount_options.push(MountOption::RO);
        }
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let session = fuser::spawn_mount(DiskFs::new(dev, id), &mountpoint, &config)
            .map_err(|e| Error::io(&mp, "mount FUSE", e))?;
        let mut me =
            FuseLoop { loop_dev: None, session: Some(session), mountpoint: mountpoint.clone(), device: PathBuf::new() };
        let disk = mountpoint.join(DISK_NAME);
        let backing = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(nix::libc::O_DIRECT)
            .open(&disk)
            .map_err(|e| Error::io(disk.display().to_string(), "open", e))?;
        let mut flags = LO_FLAGS_DIRECT_IO | LO_FLAGS_AUTOCLEAR;
        if read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        let l = LoopDevice::attach(&backing, flags, &format!("{FSNAME}:{id}"))?;
        me.device = l.path().to_path_buf();
        me.loop_dev = Some(l);
        tracing::info!(device = %me.device.display(), id, read_only, "attached (fuse-loop)");
        Ok(me)
    }

    fn teardown(&mut self) -> Result<()> {
        // The loop device first: once the FUSE daemon stops, its I/O would fail.
        let r = match self.loop_dev.take() {
            Some(l) => l.detach(),
            None => Ok(()),
        };
        if let Some(s) = self.session.take() {
            wait_until_unused(&self.mountpoint);
            if let Err(e) = s.umount_and_join() {
                // Still busy (the loop device held open past its release wait): detached lazily,
                // so no mount is left behind; the kernel ends it once the loop device lets go.
                // The detach still fails: something may use the device until then.
                let lazy = match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) => "detached lazily",
                    Err(_) => "left mounted",
                };
                return Err(Error::io(format!("{} ({lazy})", self.mountpoint.display()), "unmount FUSE", e));
            }
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
        r
    }
}

/// Waits, at most [`loop_dev::RELEASE_WAIT`], until nothing uses the mount at `mountpoint`. The
/// kernel removes a loop device's binding (what [`LoopDevice::detach`] waits for) a moment before
/// it drops its reference to the backing file: when another holder's close released the device,
/// that close may not have dropped the reference yet, and an unmount then would fail as busy.
/// The probe is `umount2(MNT_EXPIRE)`: EBUSY while the mount is in use; once it is not, EAGAIN
/// (it only marks the mount, which the unmount that follows removes).
fn wait_until_unused(mountpoint: &Path) {
    let deadline = std::time::Instant::now() + loop_dev::RELEASE_WAIT;
    while nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_EXPIRE) == Err(nix::errno::Errno::EBUSY)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Attached for FuseLoop {
    fn device_path(&self) -> &Path {
        &self.device
    }

    fn detach(mut self: Box<Self>) -> Result<()> {
        self.teardown()
    }
}

impl Drop for FuseLoop {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "detaching the fuse-loop device failed");
        }
    }
}

/// Detaches loop devices and unmounts FUSE mounts that a previous (crashed) process left under
/// `run_dir`. Returns what it removed.
pub fn cleanup_stale(run_dir: &Path) -> Vec<String> {
    let base = run_dir.join("fuse");
    let mut done = Vec::new();
    for (dev, backing) in loop_dev::attached_under(&base) {
        match loop_dev::detach_path(&dev) {
            Ok(()) => done.push(format!("detached {} ({})", dev.display(), backing.display())),
            Err(e) => tracing::warn!(error = %e, "cannot detach a stale loop device"),
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mounts.lines() {
            let mp = line.split(' ').nth(4).map(unescape_mount_path);
            if let Some(mp) = mp.filter(|p| p.starts_with(&base)) {
                match nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) => done.push(format!("unmounted {}", mp.display())),
                    Err(e) => {
                        tracing::warn!(mountpoint = %mp.display(), error = %e, "cannot unmount a stale FUSE mount")
                    }
                }
                let _ = std::fs::remove_dir(&mp);
            }
        }
    }
    done
}

/// Undoes the octal escapes of /proc/self/mountinfo paths (`\040` for a space, ...).
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}
