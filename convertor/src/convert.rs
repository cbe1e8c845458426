//! Registry-to-registry conversion (`snapshotter.md` §11.2, §11.3): the graph walk over
//! indexes and manifests, and per manifest the layer pipeline: dedup check, download, build (in
//! order, each over the ones below), upload, then the config and the manifest.
//!
//! Downloads run ahead of the builds and uploads run behind them, so a layer is built while the
//! next ones arrive and the previous ones leave. The manifest (and the tag) is pushed last: a
//! conversion that fails leaves no tag pointing at a partial image, only complete,
//! content-addressed blobs nothing refers to yet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::Reference;
use serde_json::{json, Value};
use tokio::sync::{OnceCell, Semaphore};
use tracing::{debug, info, warn};

use crate::chain::chain_ids;
use crate::error::{Error, Result};
use crate::image::{self, MediaTypes};
use crate::layer::{self, Built};
use crate::registry::{Document, Registry};
use crate::store::{Entry, Store};

/// `artifactType` of an overlaybd image pointing at its source (`--referrer`).
pub const ARTIFACT_TYPE: &str = "application/vnd.containerd.overlaybd.native.v1+json";

/// Layer media types the convertor reads (plain, gzip or zstd tars).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// What a conversion makes and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// How layers are built.
    pub layer: layer::Options,
    /// OCI media types (else Docker's) for manifests, configs and layers.
    pub oci: bool,
    /// Point each converted manifest or index at its source (`subject`, `artifactType`).
    pub referrer: bool,
    /// Manifests converted at the same time (0: all).
    pub concurrency: usize,
    /// Work directory.
    pub dir: PathBuf,
    /// Keep the work directory's layer files.
    pub reserve: bool,
    /// Build only: push nothing.
    pub no_upload: bool,
    /// Write each converted config and manifest (and index) into the work directory.
    pub dump_manifest: bool,
}

/// A converted manifest or index.
#[derive(Clone, Debug)]
pub struct Converted {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// `sha256:...`.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
}

/// Converts images of one repository into overlaybd images in the same repository.
pub struct Convertor {
    reg: Arc<Registry>,
    store: Option<Arc<Store>>,
    opts: Options,
    /// `host/repository` (no tag).
    repo: Reference,
    next_dir: std::sync::atomic::AtomicUsize,
    /// Layers built (or found converted) in this run, by chain ID.
    built: Mutex<HashMap<String, Arc<OnceCell<Built>>>>,
    /// Source downloads of this run, by chain ID.
    sources: Mutex<HashMap<String, SharedDownload>>,
    /// Converted layers downloaded as lowers, by chain ID.
    local: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
    /// Downloads at the same time.
    downloads: Arc<Semaphore>,
}

type SharedDownload = futures_util::future::Shared<
    std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<PathBuf, String>> + Send>>,
>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

fn desc_field<'a>(d: &'a Value, f: &str, what: &str) -> Result<&'a str> {
    d.get(f).and_then(Value::as_str).ok_or_else(|| Error::Image(format!("{what} has no {f}")))
}

fn desc_size(d: &Value, what: &str) -> Result<u64> {
    d.get("size").and_then(Value::as_u64).ok_or_else(|| Error::Image(format!("{what} has no size")))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Image(format!("a build task failed: {e}")))?
}

impl Convertor {
    /// A convertor for `repo` (`host/repository`).
    pub fn new(reg: Registry, store: Option<Store>, repo: &str, opts: Options) -> Result<Convertor> {
        let repo: Reference =
            repo.parse().map_err(|e| Error::Image(format!("{repo} is not a repository reference: {e}")))?;
        if repo.tag().is_some_and(|t| t != "latest") || repo.digest().is_some() {
            return Err(Error::Image(format!("-r takes a repository without tag or digest, not {repo}")));
        }
        Ok(Convertor {
            reg: Arc::new(reg),
            store: store.map(Arc::new),
            opts,
            repo,
            next_dir: Default::default(),
            built: Default::default(),
            sources: Default::default(),
            local: Default::default(),
            downloads: Arc::new(Semaphore::new(3)),
        })
    }

    fn at(&self, tag: Option<&str>, digest: Option<&str>) -> Reference {
        let (r, p) = (self.repo.registry().to_string(), self.repo.repository().to_string());
        match (tag, digest) {
            (_, Some(d)) => Reference::with_digest(r, p, d.to_string()),
            (Some(t), None) => Reference::with_tag(r, p, t.to_string()),
            (None, None) => Reference::with_tag(r, p, "latest".into()),
        }
    }

    fn media_types(&self) -> MediaTypes {
        MediaTypes { oci: self.opts.oci || self.opts.referrer }
    }

    /// The build settings that make a layer blob what it is, beside its content (part of the
    /// dedup store's keys): empty for the defaults, which are the reference's.
    fn layer_settings(&self) -> String {
        let (l, d) = (&self.opts.layer, layer::Options::default());
        if (&l.algorithm, l.block_size_kib, l.vsize_gb) == (&d.algorithm, d.block_size_kib, d.vsize_gb) {
            return String::new();
        }
        format!("alg={} bs={} vsize={}", l.algorithm, l.block_size_kib, l.vsize_gb)
    }

    /// The same for a converted manifest (whose media type is stored beside it): the layer
    /// settings and whether it points at its source.
    fn manifest_settings(&self) -> String {
        match (self.layer_settings(), self.opts.referrer) {
            (l, false) => l,
            (l, true) if l.is_empty() => "referrer".into(),
            (l, true) => format!("{l} referrer"),
        }
    }

    /// Converts the image at `input` (a tag, or a digest when `by_digest`) into `output_tag`;
    /// the converted top document.
    pub async fn convert(&self, input: &str, by_digest: bool, output_tag: &str) -> Result<Converted> {
        let src = if by_digest { self.at(None, Some(input)) } else { self.at(Some(input), None) };
        let doc = self.reg.document(&src).await?;
        info!(source = %src, digest = %doc.digest, media_type = %doc.media_type, "converting");
        std::fs::create_dir_all(&self.opts.dir).map_err(io(&self.opts.dir))?;
        if !self.opts.no_upload {
            self.reg.auth_push(&self.at(Some(output_tag), None)).await?;
        }
        let out = async {
            let out = self.convert_document(doc, "").await?;
            if !self.opts.no_upload {
                self.reg.push_document(&self.at(Some(output_tag), None), out.bytes.clone(), &out.media_type).await?;
            }
            Ok::<_, Error>(out)
        }
        .await;
        if !self.opts.reserve {
            let _ = std::fs::remove_dir_all(self.opts.dir.join("layers"));
        }
        let out = out?;
        info!(tag = output_tag, digest = %out.digest, "converted");
        Ok(out)
    }

    /// A manifest or an index; children are pushed by digest, the top one by the caller.
    fn convert_document<'a>(
        &'a self,
        doc: Document,
        platform: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Converted>> + Send + 'a>> {
        Box::pin(async move {
            if doc.is_index() {
                self.convert_index(doc).await
            } else {
                self.convert_manifest(doc, platform).await
            }
        })
    }

    async fn convert_index(&self, doc: Document) -> Result<Converted> {
        let mut v: Value = serde_json::from_slice(&doc.bytes).map_err(|e| Error::Image(format!("the index: {e}")))?;
        let entries = v
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| Error::Image(format!("index {} has no manifests", doc.digest)))?;
        let kept: Vec<Value> = entries
            .into_iter()
            .filter(|m| {
                let att = m.pointer("/annotations/vnd.docker.reference.type").and_then(Value::as_str)
                    == Some("attestation-manifest");
                if att {
                    debug!(digest = ?m.get("digest"), "skipping an attestation manifest");
                }
                !att
            })
            .collect();
        if kept.is_empty() {
            return Err(Error::Image(format!("index {} lists no image manifests", doc.digest)));
        }
        let limit = if self.opts.concurrency == 0 { kept.len() } else { self.opts.concurrency };
        let sem = Arc::new(Semaphore::new(limit));
        let mut jobs = Vec::new();
        for m in &kept {
            let digest = desc_field(m, "digest", "an index entry")?.to_string();
            let p = m.get("platform").cloned().unwrap_or(Value::Null);
            let platform = [p.get("os"), p.get("architecture"), p.get("variant")]
                .iter()
                .filter_map(|x| x.and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("_");
            let sem = sem.clone();
            jobs.push(async move {
                let _permit = sem.acquire().await.map_err(|e| Error::Image(e.to_string()))?;
                let child = self.reg.document(&self.at(None, Some(&digest))).await?;
                let out = self.convert_document(child, &platform).await?;
                if !self.opts.no_upload {
                    self.reg
                        .push_document(&self.at(None, Some(&out.digest)), out.bytes.clone(), &out.media_type)
                        .await?;
                }
                Ok::<_, Error>(out)
            });
        }
        let results = futures_util::future::join_all(jobs).await;
        let mut new_entries = Vec::new();
        for (mut m, r) in kept.into_iter().zip(results) {
            let out = r?;
            m["digest"] = json!(out.digest);
            m["size"] = json!(out.bytes.len());
            m["mediaType"] = json!(out.media_type);
            new_entries.push(m);
        }
        v["manifests"] = Value::Array(new_entries);
        let media_type = if self.media_types().oci {
            let t = "application/vnd.oci.image.index.v1+json";
            v["mediaType"] = json!(t);
            t.to_string()
        } else {
            doc.media_type.clone()
        };
        if self.opts.referrer {
            v["artifactType"] = json!(ARTIFACT_TYPE);
            v["subject"] = json!({ "mediaType": doc.media_type, "digest": doc.digest, "size": doc.bytes.len() });
        }
        let bytes = serde_json::to_vec(&v).map_err(|e| Error::Image(format!("encoding the index: {e}")))?;
        if self.opts.dump_manifest {
            let p = self.opts.dir.join("index.json");
            std::fs::write(&p, &bytes).map_err(io(&p))?;
        }
        Ok(Converted { digest: image::digest_of(&bytes), bytes, media_type })
    }

    async fn convert_manifest(&self, doc: Document, platform: &str) -> Result<Converted> {
        let mt = self.media_types();
        let host = self.reg.host().to_string();
        let repo = self.repo.repository().to_string();
        let settings = self.layer_settings();
        if let Some(hit) = self.converted_manifest(&doc, &self.manifest_settings()).await? {
            return Ok(hit);
        }
        let m: Value = serde_json::from_slice(&doc.bytes).map_err(|e| Error::Image(format!("the manifest: {e}")))?;
        let cfg_desc = m.get("config").ok_or_else(|| Error::Image(format!("manifest {} has no config", doc.digest)))?;
        let cfg_digest = desc_field(cfg_desc, "digest", "the config descriptor")?;
        let src_config = self
            .reg
            .blob_bytes(&self.at(None, Some(cfg_digest)), cfg_digest, desc_size(cfg_desc, "the config")?)
            .await?;
        let diff_ids = image::diff_ids(&src_config)?;
        let layers = m
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Image(format!("manifest {} has no layers", doc.digest)))?;
        if layers.len() != diff_ids.len() {
            return Err(Error::Image(format!(
                "manifest {} lists {} layers but its config {} diff IDs",
                doc.digest,
                layers.len(),
                diff_ids.len()
            )));
        }
        let mut sources = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let t = desc_field(l, "mediaType", "a layer descriptor")?;
            if l.pointer(&format!("/annotations/{}", image::ANNOTATION_BLOB_DIGEST.replace('/', "~1"))).is_some() {
                return Err(Error::Unsupported(format!("layer {i} is already an overlaybd layer")));
            }
            if !LAYER_TYPES.contains(&t) {
                return Err(Error::Unsupported(format!("layer {i}: unsupported media type {t}")));
            }
            sources.push((
                desc_field(l, "digest", "a layer descriptor")?.to_string(),
                desc_size(l, "a layer descriptor")?,
            ));
        }
        let chains = chain_ids(&diff_ids);

        // dedup first: layers already converted (here, or on another repository of this host)
        // (a stack this run has already built or found needs no lookup)
        let mut known = Vec::new();
        for chain in &chains {
            known.push(match self.layer_cell(chain).initialized() {
                true => None,
                false => self.converted_layer(chain, &settings).await?,
            });
        }
        // source downloads of the layers to build, ahead of the builds
        for (i, chain) in chains.iter().enumerate() {
            if known[i].is_none() && !self.layer_cell(chain).initialized() {
                // started now, awaited by the build
                drop(self.source(chain, &sources[i].0, sources[i].1));
            }
        }
        // builds in order, each over the ones below; uploads behind them
        let mut built: Vec<Built> = Vec::new();
        let mut uploads = Vec::new();
        let mut failure = None;
        for (i, chain) in chains.iter().enumerate() {
            let r = async {
                let mut lowers = Vec::new();
                for (j, b) in built.iter().enumerate() {
                    lowers.push(self.local_file(&chains[j], b).await?);
                }
                self.layer_cell(chain)
                    .get_or_try_init(|| async {
                        if let Some(e) = known[i].clone() {
                            let file = self.layer_dir(chain).join("overlaybd.commit");
                            return Ok(Built { file, digest: e.digest, size: e.size });
                        }
                        let blob = self.source(chain, &sources[i].0, sources[i].1).await?;
                        let (dir, diff, ch, o) =
                            (self.layer_dir(chain), diff_ids[i].clone(), chains.clone(), self.opts.layer.clone());
                        let b = blocking(move || {
                            let r = layer::build(&dir, i, &blob, &diff, &ch, &lowers, &o);
                            let _ = std::fs::remove_file(&blob);
                            r
                        })
                        .await?;
                        info!(layer = i, digest = %b.digest, size = b.size, "built");
                        if !self.opts.no_upload {
                            let (reg, at, b2) = (self.reg.clone(), self.at(None, Some(&b.digest)), b.clone());
                            let (store, chain, settings, host, repo) =
                                (self.store.clone(), chain.clone(), settings.clone(), host.clone(), repo.clone());
                            uploads.push(tokio::spawn(async move {
                                reg.push_file(&at, &b2.file, &b2.digest, b2.size).await?;
                                if let Some(s) = store {
                                    let e = Entry { repo, digest: b2.digest, size: b2.size, media_type: String::new() };
                                    s.add_layer(&host, &chain, &settings, &e).await?;
                                }
                                Ok::<_, Error>(())
                            }));
                        }
                        Ok::<_, Error>(b)
                    })
                    .await
                    .cloned()
            }
            .await;
            match r {
                Ok(b) => built.push(b),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        for u in uploads {
            let r = u.await.map_err(|e| Error::Image(format!("an upload failed: {e}"))).and_then(|r| r);
            if let (Err(e), None) = (r, &failure) {
                failure = Some(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let config = image::config(&src_config, &built)?;
        let mut out: Value = serde_json::from_slice(&image::manifest(&doc.bytes, &config, &built, mt)?)
            .map_err(|e| Error::Image(e.to_string()))?;
        if self.opts.referrer {
            out["artifactType"] = json!(ARTIFACT_TYPE);
            out["subject"] = json!({ "mediaType": doc.media_type, "digest": doc.digest, "size": doc.bytes.len() });
        }
        let bytes = serde_json::to_vec(&out).map_err(|e| Error::Image(format!("encoding the manifest: {e}")))?;
        let converted = Converted { digest: image::digest_of(&bytes), bytes, media_type: mt.manifest().to_string() };
        if self.opts.dump_manifest {
            let n = self.next_dir.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let hex = doc.digest.trim_start_matches("sha256:");
            let mdir =
                self.opts.dir.join(format!("{n}-{}-{hex}", if platform.is_empty() { "image" } else { platform }));
            std::fs::create_dir_all(&mdir).map_err(io(&mdir))?;
            for (name, b) in [("config.json", &config), ("manifest.json", &converted.bytes)] {
                let p = mdir.join(name);
                std::fs::write(&p, b).map_err(io(&p))?;
            }
        }
        if !self.opts.no_upload {
            let cd = image::digest_of(&config);
            self.reg.push_bytes(&self.at(None, Some(&cd)), config, &cd).await?;
            if let Some(s) = &self.store {
                let e = Entry {
                    repo: repo.clone(),
                    digest: converted.digest.clone(),
                    size: converted.bytes.len() as u64,
                    media_type: converted.media_type.clone(),
                };
                s.add_manifest(&host, &doc.digest, &self.manifest_settings(), &e).await?;
            }
        }
        Ok(converted)
    }

    /// Where the layer of `chain` is built (shared by every manifest of the conversion that has
    /// this layer stack).
    fn layer_dir(&self, chain: &str) -> PathBuf {
        self.opts.dir.join("layers").join(chain.trim_start_matches("sha256:"))
    }

    fn layer_cell(&self, chain: &str) -> Arc<OnceCell<Built>> {
        let mut m = self.built.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(chain.to_string()).or_default().clone()
    }

    /// The source blob of the layer of `chain`, downloaded once (the first call starts it).
    fn source(&self, chain: &str, digest: &str, size: u64) -> impl std::future::Future<Output = Result<PathBuf>> {
        let mut m = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let job = m
            .entry(chain.to_string())
            .or_insert_with(|| {
                let (reg, sem, at) = (self.reg.clone(), self.downloads.clone(), self.at(None, Some(digest)));
                let (dir, digest) = (self.layer_dir(chain), digest.to_string());
                let job = tokio::spawn(async move {
                    let _p = sem.acquire().await.map_err(|e| e.to_string())?;
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    let f = dir.join("layer.blob");
                    reg.blob_to_file(&at, &digest, size, &f).await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(f)
                });
                futures_util::FutureExt::shared(Box::pin(async move {
                    job.await.map_err(|e| format!("a download failed: {e}")).and_then(|r| r)
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>)
            })
            .clone();
        async move { job.await.map_err(Error::Registry) }
    }

    /// The built file of a layer below a build: a layer found in the dedup store is downloaded
    /// (once) from the registry.
    async fn local_file(&self, chain: &str, b: &Built) -> Result<PathBuf> {
        if b.file.exists() {
            return Ok(b.file.clone());
        }
        let cell = {
            let mut m = self.local.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(chain.to_string()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let dir = self.layer_dir(chain);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            self.reg.blob_to_file(&self.at(None, Some(&b.digest)), &b.digest, b.size, &b.file).await?;
            debug!(chain, digest = %b.digest, "converted layer downloaded as a lower");
            Ok::<_, Error>(b.file.clone())
        })
        .await
        .cloned()
    }

    /// A layer stack converted before with these settings, present (or mounted) in this
    /// repository; entries the registry no longer has are forgotten.
    async fn converted_layer(&self, chain: &str, settings: &str) -> Result<Option<Entry>> {
        let Some(store) = &self.store else { return Ok(None) };
        if self.opts.no_upload {
            return Ok(None);
        }
        let (host, repo) = (self.reg.host(), self.repo.repository());
        for e in store.layers(host, chain, settings, repo).await? {
            let here = self.at(None, Some(&e.digest));
            if e.repo == repo {
                if self.reg.has_blob(&here, &e.digest).await? {
                    debug!(chain, digest = %e.digest, "layer converted before");
                    return Ok(Some(e));
                }
                store.forget_layer(host, chain, settings, &e.repo).await?;
                continue;
            }
            let from = Reference::with_digest(host.to_string(), e.repo.clone(), e.digest.clone());
            if self.reg.mount_blob(&here, &from, &e.digest).await {
                info!(chain, digest = %e.digest, from = %e.repo, "layer mounted from another repository");
                let mine = Entry { repo: repo.to_string(), ..e };
                store.add_layer(host, chain, settings, &mine).await?;
                return Ok(Some(mine));
            }
            warn!(chain, digest = %e.digest, from = %e.repo, "could not mount a converted layer; forgetting it");
            store.forget_layer(host, chain, settings, &e.repo).await?;
        }
        Ok(None)
    }

    /// A conversion of this very manifest with these settings that this repository still has.
    async fn converted_manifest(&self, doc: &Document, settings: &str) -> Result<Option<Converted>> {
        let Some(store) = &self.store else { return Ok(None) };
        if self.opts.no_upload || self.opts.dump_manifest {
            return Ok(None);
        }
        let (host, repo) = (self.reg.host(), self.repo.repository());
        let media_type = self.media_types().manifest();
        for e in store.manifests(host, &doc.digest, settings, repo).await? {
            if e.repo != repo || e.media_type != media_type {
                continue;
            }
            match self.reg.document(&self.at(None, Some(&e.digest))).await {
                Ok(d) => {
                    info!(source = %doc.digest, converted = %d.digest, "manifest converted before");
                    return Ok(Some(Converted { bytes: d.bytes, digest: d.digest, media_type: d.media_type }));
                }
                Err(err) => {
                    debug!(%err, "a recorded conversion is gone");
                    store.forget_manifest(host, &doc.digest, settings, &e.repo).await?;
                }
            }
        }
        Ok(None)
    }
}
