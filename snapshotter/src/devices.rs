//! The block devices of the snapshots, owned by this process: a snapshot's `config.v1.json`
//! opened as a layer stack (local files, or lazily from the registry through one shared remote
//! source with its cache), attached with the configured frontend, formatted when new, and
//! mounted at `<sn>/block/mountpoint` (`snapshotter.md` §8, without a separate TCMU daemon).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use backstore::device::{open_device, LayerSource, LocalSource};
use backstore::frontend::{self, Attached, FrontendKind};
use backstore::remote::source::RemoteSource;
use config::{DeviceConfig, GlobalConfig, RwMode};

use crate::error::{Error, Result};
use crate::fstype::FsType;
use crate::layout::Layout;
use crate::mounts;

type Slot = Arc<Mutex<Option<Box<dyn Attached>>>>;

/// The device manager.
pub struct Devices {
    layout: Layout,
    kind: FrontendKind,
    run_dir: PathBuf,
    tenant: i64,
    backstore: GlobalConfig,
    remote: Mutex<Option<Arc<RemoteSource>>>,
    slots: Mutex<HashMap<u64, Slot>>,
}

const EROFS_MAGIC: u32 = 0xE0F5_E1E2;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Devices {
    /// A manager attaching with `kind`, keeping frontend state under `run_dir`.
    pub fn new(layout: Layout, kind: FrontendKind, run_dir: &Path, tenant: i64, backstore: GlobalConfig) -> Devices {
        Devices {
            layout,
            kind,
            run_dir: run_dir.to_path_buf(),
            tenant,
            backstore,
            remote: Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The frontend's name for snapshot `id`'s device.
    fn device_id(&self, id: u64) -> String {
        if self.tenant >= 0 {
            format!("t{}-{id}", self.tenant)
        } else {
            id.to_string()
        }
    }

    fn slot(&self, id: u64) -> Slot {
        lock(&self.slots).entry(id).or_default().clone()
    }

    /// Where `cfg`'s lowers are read from: local files, or the shared remote source (one
    /// registry client and one chunk cache for every device and prefetch).
    pub fn source(&self, cfg: &DeviceConfig) -> Result<Arc<dyn LayerSource>> {
        let needs_remote = cfg.lowers.iter().any(|l| l.local_path().is_none() && !l.digest.is_empty());
        if !needs_remote {
            return Ok(Arc::new(LocalSource));
        }
        let mut r = lock(&self.remote);
        if r.is_none() {
            let s = RemoteSource::from_global(&self.backstore)
                .map_err(|e| Error::Device(format!("setting up remote layers (cache, credentials): {e}")))?;
            *r = Some(Arc::new(s));
        }
        let s: Arc<RemoteSource> = r.clone().ok_or_else(|| Error::Device("remote source".into()))?;
        Ok(s)
    }

    /// Whether snapshot `id` has a device attached by this process.
    pub fn is_attached(&self, id: u64) -> bool {
        // the map's lock is not held while waiting for the slot, which a slow attach may hold
        let slot = lock(&self.slots).get(&id).cloned();
        slot.is_some_and(|s| lock(&s).is_some())
    }

    /// The ids with a device attached.
    pub fn attached_ids(&self) -> Vec<u64> {
        let slots: Vec<(u64, Slot)> = lock(&self.slots).iter().map(|(k, v)| (*k, v.clone())).collect();
        slots.into_iter().filter(|(_, s)| lock(s).is_some()).map(|(k, _)| k).collect()
    }

    /// Attaches snapshot `id`'s device (if this process has not yet) and, unless `wt` is `dev`,
    /// mounts its file system at the snapshot's mountpoint (read-only for `overlayfs`), making
    /// the file system first when `mkfs`. Returns the device path.
    pub fn attach_and_mount(&self, id: u64, wt: RwMode, fs: &FsType, mkfs: bool) -> Result<PathBuf> {
        let slot = self.slot(id);
        let mut g = lock(&slot);
        let mp = self.layout.mountpoint(id);
        if let Some(a) = g.as_ref() {
            if wt == RwMode::Dev || mounts::is_mounted(&mp) {
                return Ok(a.device_path().to_path_buf());
            }
        } else if mounts::is_mounted(&mp) {
            // mounted by an earlier process whose device is gone: clear it before attaching anew
            tracing::warn!(id, mountpoint = %mp.display(), "a stale mount of a dead device: unmounting it");
            mounts::unmount_lazily(&mp);
        }
        let fresh = g.is_none();
        if fresh {
            *g = Some(self.attach(id)?);
        }
        let Some(dev) = g.as_ref().map(|a| a.device_path().to_path_buf()) else {
            return Err(Error::Device(format!("snapshot {id}: no device")));
        };
        let r = self.prepare_fs(&dev, &mp, wt, fs, mkfs && fresh);
        if let Err(e) = r {
            if fresh {
                if let Some(a) = g.take() {
                    let _ = a.detach();
                }
            }
            return Err(e);
        }
        Ok(dev)
    }

    fn attach(&self, id: u64) -> Result<Box<dyn Attached>> {
        let config = self.layout.config(id);
        let cfg = DeviceConfig::load(&config).map_err(|e| Error::Device(format!("snapshot {id}: {e}")))?;
        let source = self.source(&cfg)?;
        let stack = open_device(&config, source.as_ref())
            .map_err(|e| Error::Device(format!("opening the device of snapshot {id} ({}): {e}", config.display())))?;
        let a = frontend::attach(self.kind, Arc::new(stack), &self.device_id(id), &self.run_dir)
            .map_err(|e| Error::Device(format!("attaching the device of snapshot {id} ({}): {e}", self.kind)))?;
        let mark = self.layout.backstore_mark(id);
        if let Err(e) = std::fs::write(&mark, a.device_path().display().to_string()) {
            let _ = a.detach();
            return Err(Error::io(&mark, "write", e));
        }
        tracing::info!(id, device = %a.device_path().display(), "device attached");
        Ok(a)
    }

    fn prepare_fs(&self, dev: &Path, mp: &Path, wt: RwMode, fs: &FsType, mkfs: bool) -> Result<()> {
        let mut fstype = fs.fs.clone();
        if !mkfs && is_erofs(dev) {
            fstype = "erofs".into();
        }
        if mkfs {
            let out = Command::new("mkfs")
                .arg("-t")
                .arg(&fstype)
                .args(&fs.mkfs_args)
                .arg(dev)
                .output()
                .map_err(|e| Error::Device(format!("running mkfs -t {fstype}: {e}")))?;
            if !out.status.success() {
                return Err(Error::Device(format!(
                    "mkfs -t {fstype} {} {} failed: {}{}",
                    fs.mkfs_args.join(" "),
                    dev.display(),
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        if wt == RwMode::Dev {
            return Ok(());
        }
        std::fs::create_dir_all(mp).map_err(|e| Error::io(mp, "create the mountpoint", e))?;
        mounts::mount_device(dev, mp, &fstype, &fs.mount_opts, wt == RwMode::Overlayfs)
    }

    /// Unmounts snapshot `id`'s file system and detaches its device. Nothing attached is fine.
    pub fn unmount_and_detach(&self, id: u64) -> Result<()> {
        let slot = self.slot(id);
        let mut g = lock(&slot);
        let mp = self.layout.mountpoint(id);
        mounts::unmount_all(&mp)?;
        if let Some(a) = g.take() {
            let dev = a.device_path().display().to_string();
            a.detach().map_err(|e| Error::Device(format!("detaching {dev} of snapshot {id}: {e}")))?;
            tracing::info!(id, device = %dev, "device detached");
        }
        drop(g);
        lock(&self.slots).remove(&id);
        Ok(())
    }

    /// Detaches every device (at shutdown): file systems still in use are unmounted lazily.
    pub fn detach_all(&self) {
        for id in self.attached_ids() {
            let mp = self.layout.mountpoint(id);
            if mounts::unmount_all(&mp).is_err() {
                tracing::warn!(id, "file system still in use at shutdown: detaching it lazily");
                mounts::unmount_lazily(&mp);
            }
            if let Err(e) = self.unmount_and_detach(id) {
                tracing::warn!(id, error = %e, "detach at shutdown failed");
            }
        }
    }
}

fn is_erofs(dev: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(dev) else { return false };
    let mut b = [0u8; 1028];
    f.read_exact(&mut b).is_ok() && u32::from_le_bytes([b[1024], b[1025], b[1026], b[1027]]) == EROFS_MAGIC
}
