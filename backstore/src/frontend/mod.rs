//! Block frontends: how a [`BlockDevice`](crate::BlockDevice) becomes a kernel block device.
//!
//! * [`fuse_loop`]: a FUSE file exposing the disk, under a loop device with direct I/O; works
//!   wherever FUSE and loop devices exist (no kernel modules beyond those);
//! * [`ublk`]: the kernel's ublk driver (Linux 6.0+) through `libublk`;
//! * [`tcmu`]: a TCMU device (`target_core_user`) served in-process, as a SCSI disk through
//!   tcm_loop.
//!
//! `auto` picks ublk, then TCMU, then fuse-loop, by probing the kernel.

pub mod disk_fs;
pub mod fuse_loop;
pub mod loop_dev;
pub mod tcmu;
pub mod ublk;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::block::BlockDevice;
use crate::{Error, Result};

/// Which frontend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendKind {
    /// The best one the kernel offers.
    Auto,
    /// TCMU (configfs + tcm_loop).
    Tcmu,
    /// ublk (`ublk_drv`, Linux 6.0+).
    Ublk,
    /// FUSE file + loop device.
    FuseLoop,
}

impl FromStr for FrontendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(FrontendKind::Auto),
            "tcmu" => Ok(FrontendKind::Tcmu),
            "ublk" => Ok(FrontendKind::Ublk),
            "fuse-loop" | "fuse_loop" | "fuseloop" => Ok(FrontendKind::FuseLoop),
            other => {
                Err(Error::InvalidArgument(format!("unknown frontend {other:?}: use auto, tcmu, ublk or fuse-loop")))
            }
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::Auto => "auto",
            FrontendKind::Tcmu => "tcmu",
            FrontendKind::Ublk => "ublk",
            FrontendKind::FuseLoop => "fuse-loop",
        })
    }
}

/// What the kernel offers, for `auto`.
pub fn probe() -> Vec<FrontendKind> {
    let mut v = Vec::new();
    if Path::new("/dev/ublk-control").exists() {
        v.push(FrontendKind::Ublk);
    }
    if Path::new("/sys/kernel/config/target/core").exists() && Path::new("/sys/module/target_core_user").exists() {
        v.push(FrontendKind::Tcmu);
    }
    if Path::new("/dev/fuse").exists() && Path::new("/dev/loop-control").exists() {
        v.push(FrontendKind::FuseLoop);
    }
    v
}

/// A device attached to the kernel; dropping it without [`Attached::detach`] detaches too.
pub trait Attached: Send {
    /// The block device node (`/dev/loop3`, `/dev/sdb`, `/dev/ublkb0`).
    fn device_path(&self) -> &Path;
    /// Detaches the kernel device and stops serving.
    fn detach(self: Box<Self>) -> Result<()>;
}

/// Attaches `dev` with the frontend `kind` (`Auto`: the first available); `id` names the device
/// in logs and in the frontend's runtime state under `run_dir`.
pub fn attach(kind: FrontendKind, dev: Arc<dyn BlockDevice>, id: &str, run_dir: &Path) -> Result<Box<dyn Attached>> {
    let kind =
        match kind {
            FrontendKind::Auto => {
                let available = probe();
                match available.first() {
                    Some(&k) => k,
                    None => return Err(Error::InvalidArgument(
                        "no usable block frontend: ublk needs /dev/ublk-control, TCMU configfs and target_core_user, \
                         fuse-loop /dev/fuse and /dev/loop-control"
                            .into(),
                    )),
                }
            }
            k => k,
        };
    match kind {
        FrontendKind::FuseLoop => Ok(Box::new(fuse_loop::FuseLoop::attach(dev, id, run_dir)?)),
        FrontendKind::Ublk => Ok(Box::new(ublk::Ublk::attach(dev, id)?)),
        FrontendKind::Tcmu => Ok(Box::new(tcmu::Tcmu::attach(dev, id)?)),
        FrontendKind::Auto => Err(Error::InvalidArgument("auto resolves to a frontend above".into())),
    }
}
