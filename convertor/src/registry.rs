//! The registry side of the convertor: manifests, indexes and blobs read from and written to one
//! OCI distribution registry, over the `oci-client` crate (token and Basic auth, chunked and
//! monolithic uploads, cross-repository mounts). Every blob read is checked against its digest
//! and size before it is used.

use std::path::{Path, PathBuf};

use http::HeaderValue;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// Media types of manifests and indexes the convertor reads.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How to reach the registry.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `user:password` (split at the first `:`); empty: anonymous.
    pub user: String,
    /// Plain HTTP.
    pub plain_http: bool,
    /// Accept any certificate.
    pub insecure: bool,
    /// Extra CA certificates (PEM files).
    pub root_cas: Vec<PathBuf>,
}

/// A manifest or index as the registry serves it.
#[derive(Clone, Debug)]
pub struct Document {
    /// Its bytes, exactly as served (their digest is `digest`).
    pub bytes: Vec<u8>,
    /// `sha256:...`.
    pub digest: String,
    /// Its media type (from the document, else inferred from its shape).
    pub media_type: String,
}

impl Document {
    /// Whether it is an index (or a Docker manifest list).
    pub fn is_index(&self) -> bool {
        self.media_type.contains("index") || self.media_type.contains("manifest.list")
    }
}

/// A client for one registry host.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    host: String,
}

fn failed(what: String, e: impl std::fmt::Display) -> Error {
    Error::Registry(format!("{what}: {e}"))
}

impl Registry {
    /// A client for `host` (`registry.example.com:5000`).
    pub fn new(host: &str, access: &Access) -> Result<Registry> {
        let mut extra_root_certificates = Vec::new();
        for p in &access.root_cas {
            let data = std::fs::read(p).map_err(|source| Error::Io { path: p.display().to_string(), source })?;
            extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        let config = ClientConfig {
            protocol: if access.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            accept_invalid_certificates: access.insecure,
            // one PUT per blob: chunked uploads cost a round trip per MiB
            use_monolithic_push: true,
            extra_root_certificates,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            user_agent: concat!("overlaybd-convertor/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let auth = match access.user.split_once(':') {
            _ if access.user.is_empty() => RegistryAuth::Anonymous,
            Some((u, p)) => RegistryAuth::Basic(u.to_string(), p.to_string()),
            None => RegistryAuth::Basic(access.user.clone(), String::new()),
        };
        Ok(Registry { client: Client::new(config), auth, host: host.to_string() })
    }

    /// The host it talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Authenticates for pushing to `image`'s repository (pulls authenticate by themselves).
    pub async fn auth_push(&self, image: &Reference) -> Result<()> {
        self.client
            .auth(image, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| failed(format!("authenticating to push to {image}"), e))?;
        Ok(())
    }

    /// The manifest or index `image` names (by tag or digest), checked against the digest when
    /// `image` names one.
    pub async fn document(&self, image: &Reference) -> Result<Document> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(image, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| failed(format!("fetching the manifest of {image}"), e))?;
        let bytes = bytes.to_vec();
        let actual = crate::image::digest_of(&bytes);
        if let Some(want) = image.digest() {
            if want != actual {
                return Err(Error::Registry(format!("the manifest of {image} has digest {actual}, not {want}")));
            }
        }
        let _ = digest;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Image(format!("the manifest of {image} is not JSON: {e}")))?;
        let media_type = match v.get("mediaType").and_then(|m| m.as_str()) {
            Some(m) => m.to_string(),
            None if v.get("manifests").is_some() => MANIFEST_TYPES[0].to_string(),
            None => MANIFEST_TYPES[2].to_string(),
        };
        if !MANIFEST_TYPES.contains(&media_type.as_str()) {
            return Err(Error::Image(format!("{image}: unsupported manifest media type {media_type}")));
        }
        Ok(Document { bytes, digest: actual, media_type })
    }

    /// A small blob (a config) in memory, checked against its digest and size.
    pub async fn blob_bytes(&self, image: &Reference, digest: &str, size: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.pull(image, digest, &mut out).await?;
        if out.len() as u64 != size {
            return Err(Error::Registry(format!("blob {digest} of {image} has {} bytes, not {size}", out.len())));
        }
        Ok(out)
    }

    /// Downloads a blob into `path`, checked against its digest and size; nothing is left at
    /// `path` when it fails.
    pub async fn blob_to_file(&self, image: &Reference, digest: &str, size: u64, path: &Path) -> Result<()> {
        let io = |source| Error::Io { path: path.display().to_string(), source };
        let partial = path.with_extension("partial");
        let result = async {
            let mut f = tokio::fs::File::create(&partial).await.map_err(io)?;
            self.pull(image, digest, &mut f).await?;
            f.flush().await.map_err(io)?;
            let got = f.metadata().await.map_err(io)?.len();
            if got != size {
                return Err(Error::Registry(format!("blob {digest} of {image} has {got} bytes, not {size}")));
            }
            tokio::fs::rename(&partial, path).await.map_err(io)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    async fn pull<W: tokio::io::AsyncWrite + Unpin>(&self, image: &Reference, digest: &str, out: W) -> Result<()> {
        self.client.store_auth_if_needed(image.resolve_registry(), &self.auth).await;
        self.client
            .pull_blob(image, digest, out)
            .await
            .map_err(|e| failed(format!("fetching blob {digest} of {image}"), e))
    }

    /// Whether `image`'s repository has the blob.
    pub async fn has_blob(&self, image: &Reference, digest: &str) -> Result<bool> {
        self.client.store_auth_if_needed(image.resolve_registry(), &self.auth).await;
        self.client
            .blob_exists(image, digest)
            .await
            .map_err(|e| failed(format!("looking for blob {digest} in {image}"), e))
    }

    /// Mounts a blob of `from`'s repository into `image`'s; whether the registry did.
    pub async fn mount_blob(&self, image: &Reference, from: &Reference, digest: &str) -> bool {
        self.client.mount_blob(image, from, digest).await.is_ok() && self.has_blob(image, digest).await.unwrap_or(false)
    }

    /// Uploads a blob held in memory, unless the repository has it already.
    pub async fn push_bytes(&self, image: &Reference, bytes: Vec<u8>, digest: &str) -> Result<()> {
        if self.has_blob(image, digest).await? {
            return Ok(());
        }
        self.client
            .push_blob(image, bytes, digest)
            .await
            .map_err(|e| failed(format!("uploading blob {digest} to {image}"), e))?;
        Ok(())
    }

    /// Uploads a file as a blob (streamed), unless the repository has it already.
    pub async fn push_file(&self, image: &Reference, path: &Path, digest: &str, size: u64) -> Result<()> {
        if self.has_blob(image, digest).await? {
            return Ok(());
        }
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        let stream =
            futures_util::TryStreamExt::map_err(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20), |e| {
                oci_client::errors::OciDistributionError::GenericError(Some(e.to_string()))
            });
        self.client
            .push_blob_stream(image, stream, digest, Some(size))
            .await
            .map_err(|e| failed(format!("uploading blob {digest} to {image}"), e))?;
        Ok(())
    }

    /// Uploads a manifest or index under `image`'s tag or digest.
    pub async fn push_document(&self, image: &Reference, bytes: Vec<u8>, media_type: &str) -> Result<()> {
        let ct =
            HeaderValue::from_str(media_type).map_err(|e| Error::Image(format!("media type {media_type}: {e}")))?;
        self.client
            .push_manifest_raw(image, bytes, ct)
            .await
            .map_err(|e| failed(format!("uploading the manifest {image}"), e))?;
        Ok(())
    }
}
