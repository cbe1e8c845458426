//! The snapshot state machine (`snapshotter.md` §6): Prepare/View, Mounts, Commit, Remove,
//! Stat, Update, Usage, List and Cleanup over the metadata store, the snapshot directories and
//! the device manager. Everything here blocks; the gRPC service runs it off the async runtime.
//!
//! Decisions on the reference's "as written" behaviours (§14), each marked `Q<n>` where it is
//! made: Q1/Q2 device discovery and result file (the frontends wait for their device and report
//! failures directly), Q4 a `dir` View is read-only, Q5 `dev` mounts report the real fs type,
//! Q6/Q31 Mounts re-attaches a container's own writable device and reports it for parentless
//! ones, Q11 kept, Q12 kept, Q13 kept, Q14 kept, Q15 children are checked before a device is
//! detached and directories are deleted after the metadata commit, Q16 the parent is classified
//! with its own labels, Q24 kept (mutations are serialised; reads are not), Q30 a writable
//! rootfs falls back to the image's fs type. Not supported, refused with a clear error:
//! TurboOCI and zdfs layers, project quotas, Docker's init layers.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use config::{RwMode, SnapshotterConfig};
use containerd_snapshots::api::types::Mount;

use crate::blockconfig;
use crate::devices::Devices;
use crate::error::{Error, Result};
use crate::filter::{Adaptor, Filter};
use crate::fstype::FsType;
use crate::labels as L;
use crate::layout::Layout;
use crate::mounts;
use crate::storage::{classify, Storage};
use crate::store::{Kind, Record, Store, WriteTx};
use crate::usage::{disk_usage, DiskUsage};
use crate::warmup::{self, Warmups};

/// The snapshotter's state.
pub struct Snapshots {
    cfg: SnapshotterConfig,
    layout: Layout,
    store: Store,
    devices: Devices,
    /// Acceleration-layer traces replayed at pull time (`prefetchOnPull`).
    warmups: Warmups,
    index_off: bool,
    mutate: Mutex<()>,
    /// Snapshots whose devices an earlier process had mounted: attached again at start.
    reattach: Mutex<Vec<u64>>,
}

/// A snapshot as callers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    /// Key or name.
    pub name: String,
    /// The stored record.
    pub record: Record,
}

enum Outcome {
    Mounts(Vec<Mount>),
    /// A remote layer committed under its chain ID: containerd skips the download.
    Exists(String),
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new().mode(mode).create(p).map_err(|e| Error::io(p, "create", e))
}

fn random_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", n, std::process::id())
}

struct RecordFields<'a>(&'a str, &'a Record);

impl Adaptor for RecordFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("name") if path.len() == 1 => Some(self.0.to_string()),
            Some("parent") if path.len() == 1 => Some(self.1.parent.clone()),
            Some("kind") if path.len() == 1 => Some(self.1.kind.as_str().to_string()),
            Some("labels") if path.len() >= 2 => self.1.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

impl Snapshots {
    /// Opens the snapshotter at `cfg.root` with `devices`, and reconciles what an earlier
    /// process left: stale mounts of dead devices and abandoned temporary directories.
    pub fn open(cfg: SnapshotterConfig, devices_for: impl FnOnce(&Layout) -> Devices) -> Result<Snapshots> {
        if !cfg.rootfs_quota.is_empty() {
            return Err(Error::Unimplemented("rootfsQuota: project quotas are not supported yet".into()));
        }
        if cfg.runtime_type == "docker" {
            return Err(Error::Unimplemented("runtimeType docker (Docker init layers) is not supported yet".into()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.root)
            .map_err(|e| Error::io(&cfg.root, "create the root", e))?;
        let root = std::fs::canonicalize(&cfg.root).map_err(|e| Error::io(&cfg.root, "resolve the root", e))?;
        let layout = Layout::new(&root);
        if !layout.snapshots().exists() {
            mkdir(&layout.snapshots(), 0o700)?;
        }
        let store = Store::open(&layout.db())?;
        let devices = devices_for(&layout);
        let s = Snapshots {
            cfg,
            layout,
            store,
            devices,
            warmups: Warmups::default(),
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            mutate: Mutex::new(()),
            reattach: Mutex::new(Vec::new()),
        };
        s.reconcile();
        Ok(s)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.mutate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At start: the devices of an earlier process are gone with it, so their mounts are dead.
    /// Unmount them and drop abandoned dirs; [`Snapshots::reattach_devices`] then attaches
    /// those devices anew (Mounts would too, when a container asks).
    fn reconcile(&self) {
        let prefix = self.layout.snapshots();
        let mut ids = Vec::new();
        for m in mounts::mounts() {
            if m.target.starts_with(&prefix) && m.target.ends_with("block/mountpoint") {
                tracing::warn!(mountpoint = %m.target.display(), source = %m.source, "unmounting a device left by an earlier process");
                let id = m
                    .target
                    .strip_prefix(&prefix)
                    .ok()
                    .and_then(|r| r.iter().next())
                    .and_then(|c| c.to_str()?.parse::<u64>().ok());
                ids.extend(id);
                mounts::unmount_lazily(&m.target);
            }
        }
        if let Err(e) = self.remove_stale_dirs() {
            tracing::warn!(error = %e, "cleaning the snapshot directories failed");
        }
        ids.sort_unstable();
        ids.dedup();
        *self.reattach.lock().unwrap_or_else(|p| p.into_inner()) = ids;
    }

    /// Attaches and mounts again the devices an earlier process had mounted, for the snapshots
    /// that still exist (image layers read-only, writable layers read-write). Failures are
    /// logged: Mounts retries when a container needs the device.
    pub fn reattach_devices(&self) {
        let ids = std::mem::take(&mut *self.reattach.lock().unwrap_or_else(|p| p.into_inner()));
        let Ok(all) = self.store.read(|r| r.all()) else { return };
        for id in ids {
            let Some((name, rec)) = all.iter().find(|(_, r)| r.id == id) else { continue };
            let Some(cfg) = blockconfig::load(&self.layout, id) else { continue };
            let wt = if cfg.upper.is_empty() { RwMode::Overlayfs } else { RwMode::Dir };
            let parent = all.iter().find(|(n, _)| *n == rec.parent).map(|(_, p)| p);
            match self.devices.attach_and_mount(id, wt, &self.fs_type(rec, parent), false) {
                Ok(dev) => {
                    tracing::info!(id, snapshot = %name, device = %dev.display(), "device attached again after a restart")
                }
                Err(e) => {
                    tracing::warn!(id, snapshot = %name, error = %e, "attaching the device again failed (Mounts retries)")
                }
            }
        }
    }

    fn remove_stale_dirs(&self) -> Result<()> {
        let live: std::collections::HashSet<String> =
            self.store.read(|r| r.all())?.into_iter().map(|(_, r)| r.id.to_string()).collect();
        let dir = self.layout.snapshots();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, "list", e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if live.contains(&name) {
                continue;
            }
            if let Ok(id) = name.parse::<u64>() {
                if self.devices.is_attached(id) {
                    continue;
                }
                if mounts::is_mounted(&self.layout.mountpoint(id)) {
                    tracing::warn!(id, "not removing a snapshot directory whose device is still mounted");
                    continue;
                }
            }
            tracing::info!(dir = %e.path().display(), "removing a stale snapshot directory");
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(dir = %e.path().display(), error = %err, "remove failed");
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Prepare / View

    /// Prepare (`kind` Active) or View (`kind` View).
    pub fn create(&self, kind: Kind, key: &str, parent: &str, labels: BTreeMap<String, String>) -> Result<Vec<Mount>> {
        let _g = self.lock();
        let tmp = self.layout.snapshots().join(format!("new-{}", random_suffix()));
        let made = (|| {
            mkdir(&tmp, 0o700)?;
            mkdir(&tmp.join("fs"), 0o755)?;
            mkdir(&tmp.join("block"), 0o711)?;
            mkdir(&tmp.join("block").join("mountpoint"), 0o711)?;
            std::fs::write(tmp.join("block").join("init-debug.log"), b"")
                .map_err(|e| Error::io(tmp.join("block"), "create the result file", e))?;
            if kind == Kind::Active {
                mkdir(&tmp.join("work"), 0o711)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let mut placed: Option<u64> = None;
        let mut attached: Option<u64> = None;
        let r = self.store.write(|w| {
            let rec = w.create(key, parent, kind, labels)?;
            let parent_rec = if parent.is_empty() { None } else { Some(w.must(parent)?) };
            if let Some(p) = &parent_rec {
                if let Ok(md) = std::fs::metadata(self.layout.fs(p.id)) {
                    let _ = std::os::unix::fs::lchown(tmp.join("fs"), Some(md.uid()), Some(md.gid()));
                }
            }
            let dir = self.layout.dir(rec.id);
            std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, "move the new snapshot into place", e))?;
            placed = Some(rec.id);
            let image_ref = rec.label(L::CRI_IMAGE_REF).or(rec.label(L::TARGET_IMAGE_REF));
            if let Some(r) = image_ref {
                if let Err(e) = std::fs::write(self.layout.image_ref(rec.id), r) {
                    tracing::warn!(id = rec.id, error = %e, "writing image_ref failed");
                }
            }
            self.mount_point(w, key, kind, &rec, parent_rec.as_ref(), &mut attached)
        });
        match r {
            Ok(Outcome::Mounts(m)) => Ok(m),
            Ok(Outcome::Exists(msg)) => Err(Error::AlreadyExists(msg)),
            Err(e) => {
                if let Some(id) = attached {
                    if let Err(d) = self.devices.unmount_and_detach(id) {
                        tracing::warn!(id, error = %d, "detaching after a failed prepare");
                    }
                }
                match placed {
                    Some(id) => {
                        let _ = std::fs::remove_dir_all(self.layout.dir(id));
                    }
                    None => {
                        let _ = std::fs::remove_dir_all(&tmp);
                    }
                }
                Err(e)
            }
        }
    }

    /// The file system of `rec`'s device: its own `blob-fs-type` label, else its parent's (Q30:
    /// a writable rootfs takes the image's), else `defaultFsType`.
    fn fs_type(&self, rec: &Record, parent: Option<&Record>) -> FsType {
        let s = rec.label(L::BLOB_FS_TYPE).or(parent.and_then(|p| p.label(L::BLOB_FS_TYPE)));
        FsType::parse(s.unwrap_or(&self.cfg.default_fs_type))
    }

    /// `getWritableType`: the writable mode of a rootfs on `parent`.
    fn writable_type(&self, parent: Option<&Record>, labels: &BTreeMap<String, String>) -> RwMode {
        if let Some(p) = parent {
            if blockconfig::load(&self.layout, p.id).is_none() {
                return RwMode::Overlayfs;
            }
        }
        match labels.get(L::WRITABLE) {
            Some(v) => RwMode::parse(v),
            None => self.cfg.rw_mode(),
        }
    }

    fn check_blob_labels(labels: &BTreeMap<String, String>) -> Result<(String, u64)> {
        let digest = labels.get(L::BLOB_DIGEST).cloned().unwrap_or_default();
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!("label {}={digest:?}: not a sha256 digest", L::BLOB_DIGEST)));
        }
        let size_s = labels.get(L::BLOB_SIZE).map(String::as_str).unwrap_or("");
        let size =
            size_s.parse::<u64>().ok().filter(|&s| s > 0).ok_or_else(|| {
                Error::InvalidArgument(format!("label {}={size_s:?}: not a size in bytes", L::BLOB_SIZE))
            })?;
        Ok((digest, size))
    }

    /// The decision tree of `createMountPoint` (§6.2).
    fn mount_point(
        &self,
        w: &mut WriteTx,
        key: &str,
        kind: Kind,
        rec: &Record,
        parent: Option<&Record>,
        attached: &mut Option<u64>,
    ) -> Result<Outcome> {
        let id = rec.id;
        let labels = &rec.labels;
        let parent_id = parent.map(|p| p.id);
        if let Some(target) = labels.get(L::TARGET_SNAPSHOT_REF) {
            if is_turbo(labels) {
                return Err(Error::Unimplemented(format!(
                    "layer {target}: TurboOCI layers are not supported by this snapshotter; convert the image to \
                     native overlaybd (overlaybd-convertor) or pull the OCI original"
                )));
            }
            if labels.get(L::ACCELERATION_LAYER).map(String::as_str) == Some("yes") {
                let pid = parent_id
                    .ok_or_else(|| Error::InvalidArgument("an acceleration layer needs a parent layer".into()))?;
                let mut cfg = blockconfig::load(&self.layout, pid).ok_or_else(|| {
                    Error::FailedPrecondition(format!("acceleration layer: its parent (id {pid}) is not overlaybd"))
                })?;
                cfg.lowers
                    .push(config::LowerLayer { dir: self.layout.fs(id).display().to_string(), ..Default::default() });
                blockconfig::store(&self.layout, id, &cfg)?;
                return Ok(Outcome::Mounts(vec![mounts::bind(&self.layout.fs(id), false)]));
            }
            if classify(&self.layout, id, labels) == Storage::RemoteBlock {
                let (digest, size) = Self::check_blob_labels(labels)?;
                let image_ref =
                    labels.get(L::TARGET_IMAGE_REF).or(labels.get(L::CRI_IMAGE_REF)).cloned().unwrap_or_default();
                let blob = blockconfig::RemoteBlob {
                    image_ref: &image_ref,
                    digest: &digest,
                    size,
                    plain_http: labels.get(L::PLAIN_HTTP).map(String::as_str) == Some("true"),
                };
                let cfg = blockconfig::remote(&self.layout, id, parent_id, &blob, &self.cfg.mirror_registry)?;
                if labels.get(L::DOWNLOAD_REMOTE_BLOB).map(String::as_str) == Some("download") {
                    blockconfig::store(&self.layout, id, &cfg)?;
                    return Ok(Outcome::Mounts(vec![mounts::bind(&self.layout.fs(id), false)]));
                }
                let mut l = labels.clone();
                l.insert(L::REMOTE.into(), L::REMOTE_VALUE.into());
                let u = disk_usage(&self.layout.fs(id), &[]);
                w.commit_active(key, target, l, u.size, u.inodes)?;
                blockconfig::store(&self.layout, id, &cfg)?;
                tracing::info!(id, layer = %target, blob = %digest, "remote layer committed; containerd skips its download");
                self.layer_metadata_on_pull(id, &cfg);
                return Ok(Outcome::Exists(format!("target snapshot {target:?}: already exists")));
            }
        }
        let mut storage = Storage::Normal;
        let mut wt = RwMode::Overlayfs;
        if is_rootfs(labels) {
            if labels.contains_key(L::DISK_QUOTA) {
                return Err(Error::Unimplemented(format!(
                    "label {}: project quotas are not supported yet",
                    L::DISK_QUOTA
                )));
            }
            wt = self.writable_type(parent, labels);
            if wt != RwMode::Overlayfs {
                let vsize = match parent {
                    Some(_) => 0,
                    None => labels.get(L::VSIZE).and_then(|v| v.parse::<u64>().ok()).filter(|&v| v > 0).unwrap_or(64),
                };
                let rw_dir = labels.get(L::ACTIVE_PATH).map_or_else(|| self.layout.block(id), PathBuf::from);
                let cfg = blockconfig::writable(
                    &self.layout,
                    id,
                    parent_id,
                    &rw_dir,
                    vsize,
                    self.cfg.writable_layer_type == "sparse",
                )?;
                blockconfig::store(&self.layout, id, &cfg)?;
                storage = Storage::LocalBlock;
            } else if let Some(p) = parent {
                storage = classify(&self.layout, p.id, &p.labels);
            }
            if storage.is_block() {
                if let Some(p) = parent {
                    self.update_trace_settings(p, rec, (wt != RwMode::Overlayfs).then_some(id))?;
                }
                // the device is the rootfs's own when it is writable, else the image top's
                let (owner, fs) = match parent {
                    Some(p) if wt == RwMode::Overlayfs => (p.id, self.fs_type(p, None)),
                    _ => (id, self.fs_type(rec, parent)),
                };
                // a failed Prepare detaches only what it attached itself: an image device may
                // already serve other containers
                let newly = !self.devices.is_attached(owner);
                self.devices.attach_and_mount(owner, wt, &fs, parent.is_none())?;
                if newly {
                    *attached = Some(owner);
                }
            } else if labels.contains_key(L::WRITABLE) {
                let mut l = labels.clone();
                l.remove(L::WRITABLE);
                w.set_labels(key, l)?;
            }
        }
        let ancestors = w.ancestors(rec)?;
        Ok(Outcome::Mounts(self.mounts_for(kind, rec, &ancestors, storage, wt)?))
    }

    /// `updateSpec`: trace recording or an acceleration layer, written into the image top's
    /// config before its device is attached (and into the rootfs's own when it has a device).
    /// The acceleration label is the image top's (`parent`); the record-trace labels are the
    /// rootfs's own (`rootfs`: `ctr run --snapshotter-label`, `ctr-obd record-trace`).
    fn update_trace_settings(&self, parent: &Record, rootfs: &Record, own: Option<u64>) -> Result<()> {
        let path = rootfs.label(L::RECORD_TRACE_PATH).unwrap_or_default();
        let (accel, trace) = if parent.label(L::ACCELERATION_LAYER) == Some("yes") {
            (true, String::new())
        } else if rootfs.label(L::RECORD_TRACE) == Some("yes") && !path.is_empty() {
            (false, path.to_string())
        } else {
            (false, String::new())
        };
        for id in std::iter::once(parent.id).chain(own) {
            let Some(mut cfg) = blockconfig::load(&self.layout, id) else { continue };
            if cfg.acceleration_layer != accel || cfg.record_trace_path != trace {
                cfg.acceleration_layer = accel;
                cfg.record_trace_path.clone_from(&trace);
                blockconfig::store(&self.layout, id, &cfg)?;
            }
        }
        Ok(())
    }

    /// The mounts of a snapshot (§6.2 D).
    fn mounts_for(
        &self,
        kind: Kind,
        rec: &Record,
        ancestors: &[(String, Record)],
        storage: Storage,
        wt: RwMode,
    ) -> Result<Vec<Mount>> {
        let id = rec.id;
        let view = kind == Kind::View;
        if storage.is_block() {
            return Ok(match wt {
                // Q4: a View in dir mode is read-only
                RwMode::Dir => vec![mounts::bind(&self.layout.mountpoint(id), view)],
                RwMode::Dev => {
                    let dev = std::fs::read_to_string(self.layout.backstore_mark(id))
                        .map_err(|e| Error::io(self.layout.backstore_mark(id), "read", e))?;
                    // Q5: the real fs type, not always ext4
                    vec![Mount {
                        r#type: self.fs_type(rec, ancestors.first().map(|(_, p)| p)).fs,
                        source: dev.trim().to_string(),
                        target: String::new(),
                        options: vec![if view { "ro" } else { "rw" }.into(), "discard".into()],
                    }]
                }
                RwMode::Overlayfs => {
                    let Some((_, p)) = ancestors.first() else {
                        return Err(Error::Device(format!("snapshot {id}: an image device needs a parent")));
                    };
                    let lower = self.layout.mountpoint(p.id);
                    if view {
                        vec![mounts::bind(&lower, true)]
                    } else {
                        vec![mounts::overlay(
                            self.index_off,
                            Some((&self.layout.fs(id), &self.layout.work(id))),
                            &[lower],
                        )]
                    }
                }
            });
        }
        if rec.labels.contains_key(L::CONVERT_TO_TURBO) {
            return Ok(vec![mounts::bind(&self.layout.fs(id), false)]);
        }
        if ancestors.is_empty() {
            return Ok(vec![mounts::bind(&self.layout.fs(id), view)]);
        }
        let lowers: Vec<PathBuf> = ancestors.iter().map(|(_, p)| self.layout.fs(p.id)).collect();
        Ok(if !view {
            vec![mounts::overlay(self.index_off, Some((&self.layout.fs(id), &self.layout.work(id))), &lowers)]
        } else if lowers.len() == 1 {
            vec![mounts::bind(&lowers[0], true)]
        } else {
            vec![mounts::overlay(self.index_off, None, &lowers)]
        })
    }

    // -----------------------------------------------------------------------------------------
    // Mounts

    /// Mounts(key) (§6.3): re-attaches the devices the snapshot needs if they are gone (after a
    /// restart, a reboot, or autoRemoveDev).
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (rec, ancestors) = self.store.read(|r| {
            let rec = r.must(key)?;
            let a = r.ancestors(&rec)?;
            Ok((rec, a))
        })?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!("snapshot {key:?} is committed: it has no mounts")));
        }
        let parent = ancestors.first().map(|(_, p)| p);
        let own = blockconfig::load(&self.layout, rec.id).filter(|c| !c.upper.is_empty());
        if own.is_some() && !rec.labels.contains_key(L::TARGET_SNAPSHOT_REF) {
            let wt = self.writable_type(parent, &rec.labels);
            if wt != RwMode::Overlayfs {
                // Q6/Q31: the container's own writable device, attached again if it is gone
                self.devices.attach_and_mount(rec.id, wt, &self.fs_type(&rec, parent), false)?;
                return self.mounts_for(rec.kind, &rec, &ancestors, Storage::LocalBlock, wt);
            }
        }
        if let (Some(p), true) = (parent, is_rootfs(&rec.labels)) {
            let ps = classify(&self.layout, p.id, &p.labels);
            if ps.is_block() && blockconfig::load(&self.layout, p.id).is_some() {
                self.devices.attach_and_mount(p.id, RwMode::Overlayfs, &self.fs_type(p, None), false)?;
                return self.mounts_for(rec.kind, &rec, &ancestors, ps, RwMode::Overlayfs);
            }
        }
        self.mounts_for(rec.kind, &rec, &ancestors, Storage::Normal, RwMode::Overlayfs)
    }

    // -----------------------------------------------------------------------------------------
    // Commit

    /// Commit(name, key, labels) (§6.4).
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let _g = self.lock();
        let mut accel: Option<u64> = None;
        self.store.write(|w| {
            let rec = w.must(key)?;
            if rec.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active: only active ones commit"
                )));
            }
            if w.get(name)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?} already exists")));
            }
            let id = rec.id;
            let mut labels = labels;
            if rec.labels.contains_key(L::WRITABLE) && rec.label(L::ACCELERATION_LAYER) != Some("yes") {
                if let Some(cfg) = blockconfig::load(&self.layout, id).filter(|c| !c.upper.is_empty()) {
                    self.devices.unmount_and_detach(id)?;
                    self.seal(id, &cfg)?;
                    labels.insert(L::LOCAL_COMMIT_PATH.into(), self.sealed_path(id).display().to_string());
                }
            }
            if is_turbo(&labels) {
                return Err(Error::Unimplemented(format!("{name}: TurboOCI layers are not supported")));
            }
            let u = disk_usage(&self.layout.fs(id), &[]);
            let r = w.commit_active(key, name, labels, u.size, u.inodes)?;
            if rec.label(L::ACCELERATION_LAYER) == Some("yes") && rec.labels.contains_key(L::TARGET_SNAPSHOT_REF) {
                accel = Some(id);
            }
            match classify(&self.layout, id, &r.labels) {
                Storage::LocalLayer => {
                    return Err(Error::Unimplemented(format!(
                        "{name}: a layer.tar for TurboOCI conversion is not supported"
                    )))
                }
                Storage::LocalBlock => {
                    let parent_id = if r.parent.is_empty() { None } else { Some(w.must(&r.parent)?.id) };
                    let cfg = blockconfig::local(&self.layout, id, parent_id)?;
                    blockconfig::store(&self.layout, id, &cfg)?;
                    let mut l = r.labels.clone();
                    l.insert(L::LOCAL_COMMIT_PATH.into(), self.sealed_path(id).display().to_string());
                    l.remove(L::WRITABLE);
                    w.set_labels(name, l)?;
                }
                Storage::RemoteBlock | Storage::Normal => {}
            }
            Ok(())
        })?;
        if let Some(id) = accel {
            self.prefetch_on_pull(id);
        }
        Ok(())
    }

    /// After remote layer `id` is committed at pull: its metadata fetched into the cache in the
    /// background (`prefetchOnPull`). Never fails: problems are logged.
    fn layer_metadata_on_pull(&self, id: u64, cfg: &config::DeviceConfig) {
        if !self.cfg.prefetch_on_pull {
            return;
        }
        match self.devices.source(cfg) {
            Ok(source) => warmup::layer_metadata(source, id, cfg),
            Err(e) => tracing::warn!(id, error = %e, "no layer metadata fetched at pull"),
        }
    }

    /// After the Commit of acceleration layer `id`: its trace replayed into the cache in the
    /// background (`prefetchOnPull`). Never fails: problems are logged.
    fn prefetch_on_pull(&self, id: u64) {
        if !self.cfg.prefetch_on_pull {
            return;
        }
        if !self.layout.fs(id).join("trace").is_file() {
            tracing::debug!(id, "acceleration layer without a trace: no prefetch at pull");
            return;
        }
        let Some(cfg) = blockconfig::load(&self.layout, id) else {
            tracing::warn!(id, "acceleration layer without a device config: no prefetch at pull");
            return;
        };
        let cfg = warmup::warmup_config(&cfg);
        match self.devices.source(&cfg) {
            Ok(source) => self.warmups.start(source, id, cfg),
            Err(e) => tracing::warn!(id, error = %e, "no prefetch at pull"),
        }
    }

    fn sealed_path(&self, id: u64) -> PathBuf {
        self.layout.fs(id).join("overlaybd.sealed")
    }

    /// Seals a writable layer into `<fs>/overlaybd.sealed`.
    fn seal(&self, id: u64, cfg: &config::DeviceConfig) -> Result<()> {
        let data = Path::new(&cfg.upper.data);
        let index = Path::new(&cfg.upper.index);
        let layer =
            backstore::lsmt::WritableLayer::open(data, index, true, backstore::lsmt::writable::Recovery::RollBack)
                .map_err(|e| Error::Device(format!("snapshot {id}: opening its writable layer to seal it: {e}")))?;
        layer.seal().map_err(|e| Error::Device(format!("snapshot {id}: sealing its writable layer: {e}")))?;
        let sealed = self.sealed_path(id);
        std::fs::rename(data, &sealed).map_err(|e| Error::io(&sealed, "move the sealed layer into place", e))?;
        let _ = std::fs::remove_file(index);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Remove

    /// Remove(key) (§6.5).
    pub fn remove(&self, key: &str) -> Result<()> {
        let _g = self.lock();
        let removed = self.store.write(|w| {
            let rec = w.must(key)?;
            let kids = w.children(key)?;
            if !kids.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?} with child: {} depend on it",
                    kids.len()
                )));
            }
            let id = rec.id;
            self.warmups.cancel(id);
            let storage = classify(&self.layout, id, &rec.labels);
            if (storage != Storage::Normal && self.layout.backstore_mark(id).exists()) || self.devices.is_attached(id) {
                if mounts::overlay_uses(&self.layout.mountpoint(id)) {
                    tracing::info!(id, "device still used by an overlay mount: kept");
                } else {
                    self.devices.unmount_and_detach(id)?;
                }
            }
            if self.cfg.auto_remove_dev && rec.kind == Kind::Active && !rec.parent.is_empty() {
                let p = w.must(&rec.parent)?;
                // Q16: the parent is classified with its own labels
                if classify(&self.layout, p.id, &p.labels) != Storage::Normal && self.devices.is_attached(p.id) {
                    let mut others = 0;
                    for c in w.children(&rec.parent)?.into_iter().filter(|c| c != key) {
                        if w.get(&c)?.is_some_and(|r| r.kind != Kind::Committed) {
                            others += 1;
                        }
                    }
                    if others == 0 && !mounts::overlay_uses(&self.layout.mountpoint(p.id)) {
                        if let Err(e) = self.devices.unmount_and_detach(p.id) {
                            tracing::warn!(id = p.id, error = %e, "autoRemoveDev: detaching the image device failed");
                        }
                    }
                }
            }
            if mounts::is_mounted(&self.layout.mountpoint(id)) {
                return Err(Error::FailedPrecondition(format!(
                    "failed to remove {key:?}: still have mountpoint {}",
                    self.layout.mountpoint(id).display()
                )));
            }
            w.remove(key)
        })?;
        if !self.cfg.async_remove {
            let dir = self.layout.dir(removed.id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing the snapshot directory failed");
                }
            }
            self.remove_stale_dirs()?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Stat, Update, Usage, List, Cleanup

    /// Stat(key).
    pub fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        let record = self.store.read(|r| r.must(key))?;
        Ok(SnapshotInfo { name: key.to_string(), record })
    }

    /// Update(info, paths): only labels are mutable.
    pub fn update(&self, name: &str, labels: BTreeMap<String, String>, paths: &[String]) -> Result<SnapshotInfo> {
        let _g = self.lock();
        let record = self.store.write(|w| {
            let cur = w.must(name)?;
            let mut l = cur.labels.clone();
            if paths.is_empty() {
                l = labels.clone();
            }
            for p in paths {
                if p == "labels" {
                    l = labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) if !v.is_empty() => {
                            l.insert(k.to_string(), v.clone());
                        }
                        _ => {
                            l.remove(k);
                        }
                    }
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {p:?} of snapshot {name:?}: only labels are mutable"
                    )));
                }
            }
            l.retain(|_, v| !v.is_empty());
            w.set_labels(name, l)
        })?;
        Ok(SnapshotInfo { name: name.to_string(), record })
    }

    /// Usage(key) (§6.5).
    pub fn usage(&self, key: &str) -> Result<DiskUsage> {
        let rec = self.store.read(|r| r.must(key))?;
        let block = classify(&self.layout, rec.id, &rec.labels).is_block();
        if rec.kind == Kind::Active || (rec.kind == Kind::Committed && block) {
            let mut u = disk_usage(&self.layout.fs(rec.id), &[]);
            if block {
                let b = disk_usage(&self.layout.block(rec.id), &["mountpoint"]);
                u.size += b.size;
                u.inodes += b.inodes;
            }
            return Ok(u);
        }
        Ok(DiskUsage { size: rec.size, inodes: rec.inodes })
    }

    /// List(filters): every snapshot matching one of the filters.
    pub fn list(&self, filters: &[String]) -> Result<Vec<SnapshotInfo>> {
        let f = Filter::parse_all(filters).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let all = self.store.read(|r| r.all())?;
        Ok(all
            .into_iter()
            .filter(|(n, r)| f.matches(&RecordFields(n, r)))
            .map(|(name, record)| SnapshotInfo { name, record })
            .collect())
    }

    /// Cleanup: directories no snapshot owns.
    pub fn cleanup(&self) -> Result<()> {
        let _g = self.lock();
        self.remove_stale_dirs()
    }

    /// At shutdown: stop the prefetches at pull, detach every device.
    pub fn shutdown(&self) {
        self.warmups.shutdown();
        self.devices.detach_all();
    }
}

/// `isPrepareRootfs`: a container's rootfs, not a layer being unpacked.
fn is_rootfs(labels: &BTreeMap<String, String>) -> bool {
    !labels.contains_key(L::TARGET_SNAPSHOT_REF) && labels.get(L::SNAPSHOT_TYPE).map(String::as_str) != Some("image")
}

fn is_turbo(labels: &BTreeMap<String, String>) -> bool {
    L::TURBO_TARGET_DIGEST.iter().any(|k| labels.contains_key(*k))
}
