//! The global settings of the backstore: the reference's `/etc/overlaybd/overlaybd.json`
//! (`overlaybd-format.md` §9), readable as that JSON file or as a TOML section with the same
//! keys (the snapshotter's config file has it under `[backstore]`). Every key is optional and
//! takes the reference's default.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the reference keeps the global config.
pub const DEFAULT_PATH: &str = "/etc/overlaybd/overlaybd.json";

/// Logging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LogConfig {
    /// 0 debug, 1 info, 2 warning, 3 error.
    pub log_level: u32,
    /// Log file ("" = the legacy top-level `logPath`).
    pub log_path: String,
    /// Rotate at this size.
    pub log_size_mb: u32,
    /// Rotated files kept.
    pub log_rotate_num: i32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { log_level: 1, log_path: String::new(), log_size_mb: 10, log_rotate_num: 3 }
    }
}

/// The local cache of remote blobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CacheConfig {
    /// `file` (the one this implementation has), `ocf`, `download`; "" = the legacy
    /// top-level trio `cacheType`/`registryCacheDir`/`registryCacheSizeGB`.
    pub cache_type: String,
    /// Directory.
    pub cache_dir: String,
    /// Size limit in GiB.
    #[serde(rename = "cacheSizeGB")]
    pub cache_size_gb: u64,
    /// Bytes fetched per miss.
    pub refill_size: u64,
    /// Cache block size.
    pub block_size: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            cache_type: String::new(),
            cache_dir: "/opt/overlaybd/registry_cache".into(),
            cache_size_gb: 4,
            refill_size: 262_144,
            block_size: 65_536,
        }
    }
}

/// Where registry credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CredentialConfig {
    /// "" (the legacy `credentialFilePath`), `file`, `http`, `https`, `uds`.
    pub mode: String,
    /// File path, or the credential server's URL.
    pub path: String,
    /// Seconds to wait for a credential server.
    pub timeout: i64,
    /// Client certificate (`https`).
    #[serde(rename = "client_cert_path")]
    pub client_cert_path: String,
    /// Client key (`https`).
    #[serde(rename = "client_key_path")]
    pub client_key_path: String,
    /// CA to pin (`https`).
    #[serde(rename = "server_ca_path")]
    pub server_ca_path: String,
}

/// Background download of whole blobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DownloadConfig {
    /// On or off.
    pub enable: bool,
    /// Seconds after attach before the download starts.
    pub delay: i64,
    /// Random extra seconds added to `delay`.
    pub delay_extra: i64,
    /// Rate limit in MB/s.
    #[serde(rename = "maxMBps")]
    pub max_mbps: i64,
    /// Attempts.
    pub try_cnt: i64,
    /// Bytes per request.
    pub block_size: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig { enable: false, delay: 300, delay_extra: 30, max_mbps: 100, try_cnt: 5, block_size: 262_144 }
    }
}

/// A P2P proxy in front of the registry (for example Dragonfly's dfdaemon).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct P2pConfig {
    /// On or off.
    pub enable: bool,
    /// Prefix put before blob URLs.
    pub address: String,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig { enable: false, address: "http://localhost:9731/accelerator".into() }
    }
}

/// Prometheus metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExporterConfig {
    /// On or off.
    pub enable: bool,
    /// Path of the metrics page.
    pub uri_prefix: String,
    /// Port.
    pub port: u16,
    /// Update interval in µs.
    pub update_interval: u64,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig { enable: false, uri_prefix: "/metrics".into(), port: 9863, update_interval: 60_000_000 }
    }
}

/// Trace-based prefetch (replay of a recorded trace or a priority list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrefetchConfig {
    /// Reader threads of one device's prefetch.
    pub concurrency: i64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig { concurrency: 16 }
    }
}

/// The global settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GlobalConfig {
    /// Logging.
    pub log_config: LogConfig,
    /// Legacy log level (used when `logConfig.logPath` is empty).
    pub log_level: u32,
    /// Legacy log path.
    pub log_path: String,
    /// The blob cache.
    pub cache_config: CacheConfig,
    /// Legacy cache type.
    pub cache_type: String,
    /// Legacy cache directory.
    pub registry_cache_dir: String,
    /// Legacy cache size in GiB.
    #[serde(rename = "registryCacheSizeGB")]
    pub registry_cache_size_gb: u64,
    /// Credentials.
    pub credential_config: CredentialConfig,
    /// Legacy credential file.
    pub credential_file_path: String,
    /// Background download.
    pub download: DownloadConfig,
    /// Audit log on or off.
    pub enable_audit: bool,
    /// Audit log path.
    pub audit_path: String,
    /// P2P proxy.
    pub p2p_config: P2pConfig,
    /// Metrics.
    pub exporter_config: ExporterConfig,
    /// Trace-based prefetch.
    pub prefetch_config: PrefetchConfig,
    /// Registry mirrors tried before the registry itself (this implementation's addition):
    /// each replaces the scheme and host of a blob URL.
    pub mirrors: Vec<String>,
    /// User-Agent of registry requests ("" = ours).
    pub user_agent: String,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            log_config: LogConfig::default(),
            log_level: 1,
            log_path: "/var/log/overlaybd.log".into(),
            cache_config: CacheConfig::default(),
            cache_type: "file".into(),
            registry_cache_dir: "/opt/overlaybd/registry_cache".into(),
            registry_cache_size_gb: 4,
            credential_config: CredentialConfig::default(),
            credential_file_path: "/opt/overlaybd/cred.json".into(),
            download: DownloadConfig::default(),
            enable_audit: true,
            audit_path: "/var/log/overlaybd-audit.log".into(),
            p2p_config: P2pConfig::default(),
            exporter_config: ExporterConfig::default(),
            prefetch_config: PrefetchConfig::default(),
            mirrors: Vec::new(),
            user_agent: String::new(),
        }
    }
}

/// Why a global config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GlobalConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid JSON for the schema.
    #[error("{path}: not a valid global config: {source}")]
    Json {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// Not valid TOML for the schema.
    #[error("not a valid [backstore] section: {0}")]
    Toml(#[from] toml::de::Error),
}

/// The cache settings in force, after the legacy fallbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveCache {
    /// `file`, `ocf` or `download`.
    pub cache_type: String,
    /// Directory.
    pub dir: String,
    /// Size limit in bytes.
    pub size_bytes: u64,
    /// Bytes fetched per miss.
    pub refill_size: u64,
}

impl GlobalConfig {
    /// Reads the reference's JSON file; a missing file gives the defaults.
    pub fn load_json(path: &Path) -> Result<Self, GlobalConfigError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| GlobalConfigError::Json { path: shown, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GlobalConfig::default()),
            Err(source) => Err(GlobalConfigError::Read { path: shown, source }),
        }
    }

    /// Parses a TOML table with the same keys.
    pub fn from_toml(text: &str) -> Result<Self, GlobalConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// The cache settings, applying the reference's legacy fallback when `cacheConfig.cacheType`
    /// is empty.
    pub fn cache(&self) -> EffectiveCache {
        let c = &self.cache_config;
        if c.cache_type.is_empty() {
            EffectiveCache {
                cache_type: self.cache_type.clone(),
                dir: self.registry_cache_dir.clone(),
                size_bytes: self.registry_cache_size_gb << 30,
                refill_size: c.refill_size,
            }
        } else {
            EffectiveCache {
                cache_type: c.cache_type.clone(),
                dir: c.cache_dir.clone(),
                size_bytes: c.cache_size_gb << 30,
                refill_size: c.refill_size,
            }
        }
    }

    /// The credential mode and path in force (`file` with the legacy path when no mode is set).
    pub fn credentials(&self) -> (String, String) {
        let c = &self.credential_config;
        if c.mode.is_empty() {
            ("file".into(), self.credential_file_path.clone())
        } else {
            (c.mode.clone(), c.path.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_reference() {
        let g: GlobalConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(g, GlobalConfig::default());
        assert_eq!(
            g.cache(),
            EffectiveCache {
                cache_type: "file".into(),
                dir: "/opt/overlaybd/registry_cache".into(),
                size_bytes: 4 << 30,
                refill_size: 262_144
            }
        );
        assert_eq!(g.credentials(), ("file".into(), "/opt/overlaybd/cred.json".into()));
        assert_eq!((g.download.delay, g.download.delay_extra, g.download.max_mbps), (300, 30, 100));
        assert_eq!(g.p2p_config.address, "http://localhost:9731/accelerator");
        assert_eq!(g.prefetch_config.concurrency, 16);
    }

    #[test]
    fn json_and_toml_use_the_same_keys() {
        let json = r#"{"cacheConfig":{"cacheType":"file","cacheDir":"/c","cacheSizeGB":2},
            "credentialConfig":{"mode":"https","path":"https://cred","client_cert_path":"/cert"},
            "download":{"enable":true,"maxMBps":7},"p2pConfig":{"enable":true,"address":"http://p2p"},
            "prefetchConfig":{"concurrency":4},"unknownKey":1}"#;
        let toml = r#"
            [cacheConfig]
            cacheType = "file"
            cacheDir = "/c"
            cacheSizeGB = 2
            [credentialConfig]
            mode = "https"
            path = "https://cred"
            client_cert_path = "/cert"
            [download]
            enable = true
            maxMBps = 7
            [p2pConfig]
            enable = true
            address = "http://p2p"
            [prefetchConfig]
            concurrency = 4
        "#;
        let a: GlobalConfig = serde_json::from_str(json).unwrap();
        let b = GlobalConfig::from_toml(toml).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cache().size_bytes, 2 << 30);
        assert_eq!(a.credentials(), ("https".into(), "https://cred".into()));
        assert_eq!(a.credential_config.client_cert_path, "/cert");
        assert!(a.download.enable && a.download.max_mbps == 7 && a.download.delay == 300);
    }
}
