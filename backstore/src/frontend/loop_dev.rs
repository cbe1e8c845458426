//! Loop devices through their ioctls (`LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE`, `LOOP_CLR_FD`):
//! no shelling out to losetup.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Result};

const LOOP_CTL_GET_FREE: u64 = 0x4C82;
const LOOP_CONFIGURE: u64 = 0x4C0A;
const LOOP_CLR_FD: u64 = 0x4C01;
/// How long a detach waits for the kernel to release the backing file.
pub const RELEASE_WAIT: Duration = Duration::from_secs(5);
/// `lo_flags`: read-only device.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `lo_flags`: detach when the last opener closes.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `lo_flags`: direct I/O to the backing file.
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device; [`LoopDevice::detach`] (or drop) clears it.
#[derive(Debug)]
pub struct LoopDevice {
    file: Option<File>,
    path: PathBuf,
}

fn ioctl_err(path: &Path, what: &str) -> Error {
    Error::io(path.display().to_string(), what, std::io::Error::last_os_error())
}

impl LoopDevice {
    /// Attaches `backing` to a free loop device with the given `LO_FLAGS_*`; `name` is stored as
    /// the device's file name (visible in `losetup -l`) to identify it later.
    pub fn attach(backing: &File, flags: u32, name: &str) -> Result<Self> {
        let ctl_path = Path::new("/dev/loop-control");
        let ctl = File::open(ctl_path).map_err(|e| Error::io("/dev/loop-control", "open", e))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { nix::libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if n < 0 {
                return Err(ioctl_err(ctl_path, "LOOP_CTL_GET_FREE"));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = wait_open(&path, flags & LO_FLAGS_READ_ONLY == 0, deadline)?;
            let mut info = LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            };
            let nb = name.as_bytes();
            let k = nb.len().min(63);
            info.lo_file_name[..k].copy_from_slice(&nb[..k]);
            let cfg = LoopConfig { fd: backing.as_raw_fd() as u32, block_size: 512, info, reserved: [0; 8] };
            // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `cfg` is (repr(C), the
            // kernel's layout), valid for the duration of the call.
            let r = unsafe { nix::libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg as *const LoopConfig) };
            if r == 0 {
                return Ok(LoopDevice { file: Some(dev), path });
            }
            let err = std::io::Error::last_os_error();
            // Another process took this device between GET_FREE and CONFIGURE: try the next.
            if err.raw_os_error() == Some(16) && Instant::now() < deadline {
                continue;
            }
            return Err(Error::io(path.display().to_string(), "LOOP_CONFIGURE", err));
        }
    }

    /// The device node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clears the device (`LOOP_CLR_FD`) and waits, at most [`RELEASE_WAIT`], until the kernel
    /// lets go of the backing file. If something still holds the device open (udev probes a
    /// device its last writer closed), the kernel detaches it only when the last holder closes,
    /// and until then the backing file stays open: its FUSE mount could not be unmounted.
    pub fn detach(mut self) -> Result<()> {
        self.clear()?;
        let Some(name) = self.path.file_name() else { return Ok(()) };
        let bound = backing_file_attr(name);
        let deadline = Instant::now() + RELEASE_WAIT;
        while bound.exists() {
            if Instant::now() >= deadline {
                tracing::warn!(device = %self.path.display(), "the loop device is still held open: detached when closed");
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            clear_fd(&f, &self.path)?;
        }
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.clear() {
            tracing::warn!(error = %e, "detaching the loop device failed");
        }
    }
}

fn clear_fd(f: &File, path: &Path) -> Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    let r = unsafe { nix::libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD as _) };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        // ENXIO: not attached (already cleared).
        if err.raw_os_error() != Some(6) {
            return Err(Error::io(path.display().to_string(), "LOOP_CLR_FD", err));
        }
    }
    Ok(())
}

/// Detaches the loop device at `path` (used to clean up after a crash).
pub fn detach_path(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io(path.display().to_string(), "open", e))?;
    clear_fd(&f, path)
}

/// The sysfs attribute naming loop device `name`'s backing file: it exists while the device is
/// bound.
fn backing_file_attr(name: &std::ffi::OsStr) -> PathBuf {
    Path::new("/sys/block").join(name).join("loop/backing_file")
}

/// Loop devices whose backing file lies under `dir`, from sysfs.
pub fn attached_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(backing_file_attr(&e.file_name())) {
            let backing = PathBuf::from(b.trim_end().trim_end_matches(" (deleted)"));
            if backing.starts_with(dir) {
                out.push((PathBuf::from(format!("/dev/{name}")), backing));
            }
        }
    }
    out
}

/// Opens a freshly created loop node, waiting briefly for it to appear.
fn wait_open(path: &Path, write: bool, deadline: Instant) -> Result<File> {
    loop {
        match OpenOptions::new().read(true).write(write).open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(Error::io(path.display().to_string(), "open", e)),
        }
    }
}
