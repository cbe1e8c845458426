//! The device configs (`config.v1.json`) the snapshotter writes for its snapshots
//! (`snapshotter.md` §7.2–7.5): remote layers, writable layers, local layers and acceleration
//! layers, each on top of its parent's lowers.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use config::snapshotter::MirrorRegistry;
use config::{DeviceConfig, LowerLayer, UpperLayer};

use crate::error::{Error, Result};
use crate::layout::Layout;

/// Reads the config of snapshot `id`, if it has a readable one.
pub fn load(layout: &Layout, id: u64) -> Option<DeviceConfig> {
    DeviceConfig::load(&layout.config(id)).ok()
}

/// Writes `cfg` as the config of snapshot `id`: compact JSON, 0600, atomically.
pub fn store(layout: &Layout, id: u64, cfg: &DeviceConfig) -> Result<()> {
    let path = layout.config(id);
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(cfg).map_err(|e| Error::Device(format!("encoding {}: {e}", path.display())))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, "create", e))?;
    f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, "write", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, "rename into place", e))
}

/// `https://<host>/v2/<repo>/blobs` for an image reference (`docker.io` is
/// `registry-1.docker.io`; with `plain_http`, or for a host marked `insecure` in
/// `mirrorRegistry`, `http://`).
pub fn repo_blob_url(image_ref: &str, mirrors: &[MirrorRegistry], plain_http: bool) -> Result<String> {
    let bad = |why: &str| Error::InvalidArgument(format!("image reference {image_ref:?}: {why}"));
    let r = image_ref.trim();
    let (host, path) = r.split_once('/').ok_or_else(|| bad("no registry host (want host/repository[:tag])"))?;
    if host.is_empty() || path.is_empty() {
        return Err(bad("no registry host or repository"));
    }
    let path = path.split_once('@').map_or(path, |(p, _)| p);
    // a tag is a ':' after the last '/'
    let path = match path.rfind(':') {
        Some(i) if !path[i..].contains('/') => &path[..i],
        _ => path,
    };
    if path.is_empty() || path.contains("//") || path.split('/').any(|s| s == ".." || s == ".") {
        return Err(bad("malformed repository"));
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')) {
        return Err(bad("malformed registry host"));
    }
    let insecure = plain_http || mirrors.iter().any(|m| m.host == host && m.insecure);
    let host = if host == "docker.io" { "registry-1.docker.io" } else { host };
    let scheme = if insecure { "http" } else { "https" };
    Ok(format!("{scheme}://{host}/v2/{path}/blobs"))
}

/// The parent's lowers and repoBlobUrl, or a fresh config for a parentless snapshot.
fn base(layout: &Layout, id: u64, parent: Option<u64>) -> Result<DeviceConfig> {
    let mut cfg = match parent {
        Some(p) => DeviceConfig::load(&layout.config(p)).map_err(|e| {
            Error::FailedPrecondition(format!(
                "the parent snapshot (id {p}) is not an overlaybd layer ({e}): an overlaybd layer cannot sit on a plain \
                 OCI layer"
            ))
        })?,
        None => DeviceConfig::default(),
    };
    cfg.upper = UpperLayer::default();
    cfg.result_file = layout.result_file(id).display().to_string();
    cfg.acceleration_layer = false;
    cfg.record_trace_path.clear();
    Ok(cfg)
}

/// A layer blob read lazily from its image's registry.
pub struct RemoteBlob<'a> {
    /// The image reference (`host/repository[:tag][@digest]`).
    pub image_ref: &'a str,
    /// The blob's digest.
    pub digest: &'a str,
    /// The blob's size in bytes.
    pub size: u64,
    /// The registry speaks plain HTTP (the `plain-http` label).
    pub plain_http: bool,
}

/// §7.2: a lazily read layer on top of its parent's.
pub fn remote(
    layout: &Layout,
    id: u64,
    parent: Option<u64>,
    blob: &RemoteBlob<'_>,
    mirrors: &[MirrorRegistry],
) -> Result<DeviceConfig> {
    let mut cfg = base(layout, id, parent)?;
    cfg.repo_blob_url = repo_blob_url(blob.image_ref, mirrors, blob.plain_http)?;
    cfg.lowers.push(LowerLayer {
        digest: blob.digest.to_string(),
        size: blob.size,
        dir: layout.fs(id).display().to_string(),
        ..Default::default()
    });
    Ok(cfg)
}

/// §7.3: a writable layer (made here unless it exists) on top of the parent's lowers.
pub fn writable(
    layout: &Layout,
    id: u64,
    parent: Option<u64>,
    rw_dir: &Path,
    vsize_gb: u64,
    sparse: bool,
) -> Result<DeviceConfig> {
    let mut cfg = base(layout, id, parent)?;
    std::fs::create_dir_all(rw_dir).map_err(|e| Error::io(rw_dir, "create", e))?;
    let data = rw_dir.join("writable_data");
    let index = rw_dir.join("writable_index");
    if !(data.exists() && index.exists()) {
        let opts = backstore::lsmt::writable::CreateOptions {
            virtual_size: vsize_gb << 30,
            uuid: backstore::uuid::LayerUuid::random(),
            parent_uuid: backstore::uuid::LayerUuid::NIL,
            sparse,
        };
        backstore::lsmt::WritableLayer::create(&data, &index, &opts)?;
    }
    cfg.upper =
        UpperLayer { index: index.display().to_string(), data: data.display().to_string(), ..Default::default() };
    Ok(cfg)
}

/// §7.4: a local layer (`<fs>/overlaybd.commit` or `.sealed`) on top of its parent's.
pub fn local(layout: &Layout, id: u64, parent: Option<u64>) -> Result<DeviceConfig> {
    let mut cfg = base(layout, id, parent)?;
    cfg.lowers.push(LowerLayer { dir: layout.fs(id).display().to_string(), ..Default::default() });
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_blob_urls() {
        let m = vec![MirrorRegistry { host: "127.0.0.1:5000".into(), insecure: true }];
        assert_eq!(
            repo_blob_url("docker.io/overlaybd/redis:6.2.1_obd", &m, false).unwrap(),
            "https://registry-1.docker.io/v2/overlaybd/redis/blobs"
        );
        assert_eq!(repo_blob_url("127.0.0.1:5000/a/b:t", &m, false).unwrap(), "http://127.0.0.1:5000/v2/a/b/blobs");
        assert_eq!(
            repo_blob_url("127.0.0.1:5000/a/b@sha256:00", &m, false).unwrap(),
            "http://127.0.0.1:5000/v2/a/b/blobs"
        );
        assert_eq!(repo_blob_url("r.example:443/a", &[], false).unwrap(), "https://r.example:443/v2/a/blobs");
        // rpull --plain-http: any host
        assert_eq!(repo_blob_url("r.example/a:t", &[], true).unwrap(), "http://r.example/v2/a/blobs");
        for bad in ["", "noslash", "/x", "h/", "h/../x", "h o/x"] {
            let e = repo_blob_url(bad, &m, false).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        }
    }
}
