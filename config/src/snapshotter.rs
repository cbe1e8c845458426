//! The snapshotter's configuration: `/etc/overlaybd-snapshotter/config.toml`.
//!
//! The keys are the reference's `config.json` keys (`snapshotter.md` §5.1), so a JSON file in the
//! reference's format is read as well (by its `.json` extension). This implementation adds
//! `frontend`, `runDir` and a `[backstore]` section holding the backstore settings that the
//! reference keeps in `/etc/overlaybd/overlaybd.json` (that file is read when the section is
//! absent). Unknown keys are refused, so a typo is an error rather than a silent default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::GlobalConfig;

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/overlaybd-snapshotter/config.toml";

/// How a container's writable layer sits on top of an overlaybd image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwMode {
    /// An overlayfs upper directory over the image's read-only device (the default).
    Overlayfs,
    /// A writable overlaybd device, mounted by the snapshotter and bind-mounted.
    Dir,
    /// A writable overlaybd device handed to the runtime as a raw block device.
    Dev,
}

impl RwMode {
    /// The reference's rule: `dir` and `dev` name themselves, anything else is overlayfs.
    pub fn parse(s: &str) -> RwMode {
        match s {
            "dir" => RwMode::Dir,
            "dev" => RwMode::Dev,
            _ => RwMode::Overlayfs,
        }
    }
}

/// A registry the snapshotter knows about (`mirrorRegistry`): as in the reference, its only
/// effect is that an `insecure` host is reached over plain HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorRegistry {
    /// `host[:port]` as it appears in image references.
    pub host: String,
    /// Use `http://` for this host.
    pub insecure: bool,
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SnapshotterExporter {
    /// Serve metrics.
    pub enable: bool,
    /// Path of the metrics page.
    pub uri_prefix: String,
    /// TCP port on all addresses.
    pub port: u16,
}

impl Default for SnapshotterExporter {
    fn default() -> Self {
        SnapshotterExporter { enable: false, uri_prefix: "/metrics".into(), port: 9863 }
    }
}

/// The daemon's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SnapshotterConfig {
    /// Root directory: metadata store and one directory per snapshot.
    pub root: PathBuf,
    /// The unix socket containerd's proxy plugin connects to.
    pub address: PathBuf,
    /// Log level: trace, debug, info, warn, error.
    pub verbose: String,
    /// Include the source location in log lines.
    pub log_report_caller: bool,
    /// Default writable mode of a container on an overlaybd image: overlayfs, dir or dev.
    pub rw_mode: String,
    /// Detach an image's device when its last container is removed.
    pub auto_remove_dev: bool,
    /// Remove deletes only metadata; directories go at the next Cleanup.
    pub async_remove: bool,
    /// Writable layers: `append` or `sparse`.
    pub writable_layer_type: String,
    /// Registries reached over plain HTTP (`insecure`).
    pub mirror_registry: Vec<MirrorRegistry>,
    /// File system of images with no fs-type label: `fstype[;mountopts[;mkfsopts]]`.
    pub default_fs_type: String,
    /// Project quota of container rootfs directories (e.g. `20g`); "" for none.
    pub rootfs_quota: String,
    /// Multi-instance isolation of device names (-1: none).
    pub tenant: i64,
    /// Preference order of TurboOCI metadata file systems.
    pub turbo_fs_type: Vec<String>,
    /// `containerd`, or `docker` for Docker's init layers.
    pub runtime_type: String,
    /// Prometheus metrics.
    pub exporter_config: SnapshotterExporter,
    /// Block frontend: auto, ublk, tcmu or fuse-loop.
    pub frontend: String,
    /// Runtime state of the frontends (FUSE mount points); emptied on reboot.
    pub run_dir: PathBuf,
    /// At pull (a layer committed): fetch each remote layer's metadata into the cache, and
    /// replay an acceleration layer's trace into the chunk cache, rather than only when a
    /// container's device opens.
    pub prefetch_on_pull: bool,
    /// The backstore settings (cache, credentials, download, p2p). When absent the reference's
    /// `/etc/overlaybd/overlaybd.json` is read, and without that file the cache lives under
    /// `<root>/cache`.
    pub backstore: Option<GlobalConfig>,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        SnapshotterConfig {
            root: "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd".into(),
            address: "/run/overlaybd-snapshotter/overlaybd.sock".into(),
            verbose: "info".into(),
            log_report_caller: false,
            rw_mode: "overlayfs".into(),
            auto_remove_dev: false,
            async_remove: false,
            writable_layer_type: "append".into(),
            mirror_registry: Vec::new(),
            default_fs_type: "ext4".into(),
            rootfs_quota: String::new(),
            tenant: -1,
            turbo_fs_type: vec!["erofs".into(), "ext4".into()],
            runtime_type: "containerd".into(),
            exporter_config: SnapshotterExporter::default(),
            frontend: "auto".into(),
            run_dir: "/run/overlaybd-snapshotter".into(),
            prefetch_on_pull: true,
            backstore: None,
        }
    }
}

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotterConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for the schema.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
    /// Not valid JSON for the schema.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A value is out of its domain.
    #[error("{key}: {what}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        what: String,
    },
}

impl SnapshotterConfig {
    /// Reads a config file: JSON when it ends in `.json`, TOML otherwise. A missing file at the
    /// default path gives the defaults; a missing file given explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, SnapshotterConfigError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(Self::default()),
            Err(source) => return Err(SnapshotterConfigError::Read { path: shown, source }),
        };
        let c: Self = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|source| SnapshotterConfigError::Json { path: shown, source })?
        } else {
            toml::from_str(&text).map_err(|source| SnapshotterConfigError::Toml { path: shown, source })?
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), SnapshotterConfigError> {
        let bad = |key, what: String| Err(SnapshotterConfigError::Invalid { key, what });
        if self.root.as_os_str().is_empty() {
            return bad("root", "must be set".into());
        }
        if self.address.as_os_str().is_empty() {
            return bad("address", "must be set".into());
        }
        if !matches!(self.rw_mode.as_str(), "overlayfs" | "dir" | "dev") {
            return bad("rwMode", format!("{:?}: use overlayfs, dir or dev", self.rw_mode));
        }
        if !matches!(self.writable_layer_type.as_str(), "append" | "sparse") {
            return bad("writableLayerType", format!("{:?}: use append or sparse", self.writable_layer_type));
        }
        if !matches!(self.frontend.as_str(), "auto" | "ublk" | "tcmu" | "fuse-loop") {
            return bad("frontend", format!("{:?}: use auto, ublk, tcmu or fuse-loop", self.frontend));
        }
        if !matches!(self.runtime_type.as_str(), "containerd" | "docker") {
            return bad("runtimeType", format!("{:?}: use containerd or docker", self.runtime_type));
        }
        if !matches!(
            self.verbose.as_str(),
            "trace" | "debug" | "info" | "warn" | "warning" | "error" | "fatal" | "panic"
        ) {
            return bad("verbose", format!("{:?}: use trace, debug, info, warn or error", self.verbose));
        }
        Ok(())
    }

    /// The default writable mode.
    pub fn rw_mode(&self) -> RwMode {
        RwMode::parse(&self.rw_mode)
    }

    /// The backstore settings in force: the `[backstore]` section, else the reference's file,
    /// else defaults with the cache under `<root>/cache` and no credential file required.
    pub fn backstore(&self) -> Result<GlobalConfig, crate::global::GlobalConfigError> {
        if let Some(b) = &self.backstore {
            return Ok(b.clone());
        }
        if Path::new(crate::global::DEFAULT_PATH).exists() {
            return GlobalConfig::load_json(Path::new(crate::global::DEFAULT_PATH));
        }
        let mut g = GlobalConfig::default();
        let dir = self.root.join("cache").display().to_string();
        g.cache_config.cache_dir.clone_from(&dir);
        g.registry_cache_dir = dir;
        g.enable_audit = false;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_reference_defaults() {
        let c: SnapshotterConfig = toml::from_str("").unwrap();
        assert_eq!(c, SnapshotterConfig::default());
        assert_eq!(c.rw_mode(), RwMode::Overlayfs);
        c.validate().unwrap();
    }

    #[test]
    fn the_reference_json_reads_as_is() {
        let j = r#"{"root":"/var/lib/overlaybd","address":"/run/o.sock","verbose":"info","rwMode":"overlayfs",
            "logReportCaller":false,"autoRemoveDev":true,"mirrorRegistry":[{"host":"localhost:5000","insecure":true}],
            "exporterConfig":{"enable":true,"uriPrefix":"/m","port":1234}}"#;
        let d = tempfile_path("c.json", j);
        let c = SnapshotterConfig::load(&d, true).unwrap();
        assert!(c.auto_remove_dev);
        assert_eq!(c.mirror_registry, vec![MirrorRegistry { host: "localhost:5000".into(), insecure: true }]);
        assert_eq!(c.exporter_config.port, 1234);
    }

    #[test]
    fn toml_with_a_backstore_section() {
        let t = "root = \"/x\"\nrwMode = \"dir\"\n[backstore.cacheConfig]\ncacheType = \"file\"\ncacheDir = \"/c\"\n";
        let c: SnapshotterConfig = toml::from_str(t).unwrap();
        assert_eq!(c.rw_mode(), RwMode::Dir);
        assert_eq!(c.backstore().unwrap().cache().dir, "/c");
    }

    #[test]
    fn typos_and_bad_values_are_refused_with_the_key() {
        let e = toml::from_str::<SnapshotterConfig>("rwmode = \"dir\"").unwrap_err().to_string();
        assert!(e.contains("rwmode"), "{e}");
        let c = SnapshotterConfig { rw_mode: "rw".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("rwMode"));
        let c = SnapshotterConfig { frontend: "nbd".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("frontend"));
        let p = tempfile_path("bad.toml", "root = 3");
        assert!(SnapshotterConfig::load(&p, true).unwrap_err().to_string().contains("bad.toml"));
        assert!(SnapshotterConfig::load(Path::new("/nonexistent/c.toml"), true).is_err());
        assert!(SnapshotterConfig::load(Path::new("/nonexistent/c.toml"), false).is_ok());
    }

    #[test]
    fn prefetch_on_pull_is_on_unless_turned_off() {
        assert!(SnapshotterConfig::default().prefetch_on_pull);
        let c: SnapshotterConfig = toml::from_str("prefetchOnPull = false").unwrap();
        assert!(!c.prefetch_on_pull);
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let c: SnapshotterConfig = toml::from_str(include_str!("../../systemd/config.toml")).unwrap();
        assert_eq!(c, SnapshotterConfig::default());
    }

    fn tempfile_path(name: &str, text: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("obd-cfg-{}-{name}", std::process::id()));
        std::fs::write(&d, text).unwrap();
        d
    }
}
