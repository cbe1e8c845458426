//! Lower layers from local files or, when a config gives a `digest` and `repoBlobUrl`, from
//! the registry through the cache.

use std::path::Path;
use std::sync::Arc;

use config::global::GlobalConfig;
use config::{DeviceConfig, LowerLayer};

use super::blob::RemoteBlob;
use super::cache::BlobCache;
use super::credentials::{CredentialFile, CredentialServer, Credentials};
use super::download::{self, DownloadOptions};
use super::registry::{ClientOptions, RegistryClient};
use crate::device::{LayerSource, LocalSource};
use crate::io::ReadAt;
use crate::{Error, Result};

/// Local layers first, remote ones otherwise.
pub struct RemoteSource {
    client: Arc<RegistryClient>,
    cache: Option<Arc<BlobCache>>,
    download: Option<DownloadOptions>,
    prefetch_concurrency: usize,
}

impl RemoteSource {
    /// A source with `client` and an optional `cache`.
    pub fn new(client: Arc<RegistryClient>, cache: Option<Arc<BlobCache>>) -> Self {
        RemoteSource { client, cache, download: None, prefetch_concurrency: crate::trace::DEFAULT_CONCURRENCY }
    }

    /// Prefetches traces with `n` worker threads (at least 1).
    pub fn with_prefetch_concurrency(mut self, n: usize) -> Self {
        self.prefetch_concurrency = n.max(1);
        self
    }

    /// Downloads whole blobs in the background (into each lower's `dir`) with `opts`.
    pub fn with_download(mut self, opts: Option<DownloadOptions>) -> Self {
        self.download = opts;
        self
    }

    /// The source the global settings describe: credentials (`file` mode), the file cache.
    pub fn from_global(g: &GlobalConfig) -> Result<Self> {
        let (mode, path) = g.credentials();
        let c = &g.credential_config;
        let read = |p: &str| -> Result<Option<Vec<u8>>> {
            if p.is_empty() {
                return Ok(None);
            }
            std::fs::read(p).map(Some).map_err(|e| Error::io(p, "read", e))
        };
        let credentials: Option<Arc<dyn Credentials>> = match mode.as_str() {
            "file" if !path.is_empty() => Some(Arc::new(CredentialFile::new(path))),
            "file" => None,
            "http" | "https" => {
                let identity = match (read(&c.client_cert_path)?, read(&c.client_key_path)?) {
                    (Some(mut cert), Some(key)) => {
                        cert.push(b'\n');
                        cert.extend_from_slice(&key);
                        Some(cert)
                    }
                    _ => None,
                };
                let timeout = std::time::Duration::from_secs(c.timeout.clamp(1, 60) as u64);
                Some(Arc::new(CredentialServer::new(&path, timeout, identity, read(&c.server_ca_path)?)?))
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "credentialConfig.mode {other:?} is not supported: use \"file\", \"http\" or \"https\""
                )))
            }
        };
        let mut opts = ClientOptions {
            credentials,
            mirrors: g.mirrors.clone(),
            p2p_prefix: g.p2p_config.enable.then(|| g.p2p_config.address.clone()),
            ..Default::default()
        };
        if !g.user_agent.is_empty() {
            opts.user_agent = g.user_agent.clone();
        }
        let client = Arc::new(RegistryClient::new(opts)?);
        let c = g.cache();
        let cache = match c.cache_type.as_str() {
            "file" | "" => Some(BlobCache::open(Path::new(&c.dir), c.size_bytes, c.refill_size)?),
            other => {
                tracing::warn!(cache_type = other, "unsupported cache type: reading without a cache");
                None
            }
        };
        let download = g.download.enable.then(|| DownloadOptions::from_config(&g.download));
        let prefetch_concurrency = g.prefetch_config.concurrency.clamp(1, 256) as usize;
        Ok(RemoteSource { client, cache, download, prefetch_concurrency })
    }
}

impl LayerSource for RemoteSource {
    fn open(&self, cfg: &DeviceConfig, index: usize, layer: &LowerLayer) -> Result<Arc<dyn ReadAt>> {
        if layer.local_path().is_some() || layer.digest.is_empty() {
            return LocalSource.open(cfg, index, layer);
        }
        if cfg.repo_blob_url.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "lower {index} ({}) has no local file and the config has no repoBlobUrl",
                layer.digest
            )));
        }
        let size =
            if layer.size > 0 { layer.size } else { self.client.blob_size(&cfg.repo_blob_url, &layer.digest)? };
        let blob =
            Arc::new(RemoteBlob::new(self.client.clone(), &cfg.repo_blob_url, &layer.digest, size, self.cache.clone()));
        // A device's own `download` section overrides the global one.
        let opts = match &cfg.download {
            Some(v) => serde_json::from_value::<config::global::DownloadConfig>(v.clone())
                .ok()
                .and_then(|d| d.enable.then(|| DownloadOptions::from_config(&d))),
            None => self.download.clone(),
        };
        // No background download while a trace is recorded (as the reference does).
        let recording = crate::trace::is_record_path(&cfg.record_trace_path);
        if let (Some(o), false, false) = (opts, layer.dir.is_empty(), recording) {
            download::spawn(&blob, std::path::PathBuf::from(&layer.dir), o);
        }
        Ok(blob)
    }

    fn prefetch_concurrency(&self) -> usize {
        self.prefetch_concurrency
    }
}
