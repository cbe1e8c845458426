//! One overlaybd layer from an OCI layer blob (`snapshotter.md` §11.3, native engine): a new
//! writable layer over the layers below it (formatted with ext4 when it is the bottom one),
//! the OCI tar applied in user space (checked against its diff ID), then committed to a
//! tar-wrapped ZFile whose UUIDs come from the chain IDs, so the same input gives the same bytes.

use std::path::{Path, PathBuf};

use backstore::tools::{apply, commit, create};
use sha2::{Digest, Sha256};

use crate::chain::layer_uuid;
use crate::error::{Error, Result};

/// How layers are built.
#[derive(Clone, Debug)]
pub struct Options {
    /// Virtual size of the image in GB (the bottom layer's).
    pub vsize_gb: u64,
    /// Sparse writable layers while building (the reference's default).
    pub sparse: bool,
    /// ZFile compression: `lz4` or `zstd`.
    pub algorithm: String,
    /// ZFile block size in KiB (4 to 64).
    pub block_size_kib: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { vsize_gb: 64, sparse: true, algorithm: "lz4".into(), block_size_kib: 4 }
    }
}

/// A built layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// The blob: a tar-wrapped ZFile (`overlaybd.commit`).
    pub file: PathBuf,
    /// Its `sha256:` digest (also its diff ID: the blob is an uncompressed tar).
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `sha256:` digest and size of a file.
pub fn file_digest(p: &Path) -> Result<(String, u64)> {
    let io = |source| Error::Io { path: p.display().to_string(), source };
    let mut f = std::fs::File::open(p).map_err(io)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io)?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// Builds layer `index` in `dir` from `blob` (a plain, gzip or zstd tar whose uncompressed
/// digest must be `diff_id`) over `lowers` (the built files of the layers below, bottom first).
/// `chain_ids` are the image's chain IDs, at least up to `index`.
pub fn build(
    dir: &Path,
    index: usize,
    blob: &Path,
    diff_id: &str,
    chain_ids: &[String],
    lowers: &[PathBuf],
    opts: &Options,
) -> Result<Built> {
    let fail = |what: String| Error::Layer { index, diff_id: diff_id.to_string(), what };
    let chain = chain_ids.get(index).ok_or_else(|| fail("no chain ID for this layer".into()))?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.display().to_string(), source })?;
    let data = dir.join("writable_data");
    let idx = dir.join("writable_index");
    let config = dir.join("config.json");
    let out = dir.join("overlaybd.commit");
    for p in [&data, &idx, &config, &out] {
        let _ = std::fs::remove_file(p);
    }
    create::run(&create::Args {
        data: data.clone(),
        index: idx.clone(),
        vsize_gb: if index == 0 { opts.vsize_gb } else { 0 },
        parent_uuid: None,
        sparse: opts.sparse,
        raw: false,
        mkfs: index == 0,
        turbo_oci: false,
        verbose: false,
    })
    .map_err(|e| fail(format!("creating the writable layer: {e:#}")))?;
    let lowers_json: Vec<serde_json::Value> =
        lowers.iter().map(|l| serde_json::json!({ "file": l.display().to_string() })).collect();
    let cfg = serde_json::json!({
        "lowers": lowers_json,
        "upper": { "data": data.display().to_string(), "index": idx.display().to_string() },
    });
    std::fs::write(&config, cfg.to_string())
        .map_err(|source| Error::Io { path: config.display().to_string(), source })?;
    apply::run(&apply::Args {
        input: blob.to_path_buf(),
        config: config.clone(),
        mkfs: false,
        raw: false,
        checksum: Some(diff_id.to_string()),
        service_config_path: PathBuf::from("/nonexistent"),
        gz_index_path: None,
        verbose: false,
    })
    .map_err(|e| fail(format!("{e:#}")))?;
    let parent = index.checked_sub(1).and_then(|i| chain_ids.get(i)).and_then(|c| layer_uuid(c));
    commit::run(&commit::Args {
        data: data.clone(),
        index: Some(idx.clone()),
        out: Some(out.clone()),
        message: String::new(),
        uuid: layer_uuid(chain),
        parent_uuid: parent,
        compress: true,
        algorithm: opts.algorithm.clone(),
        block_size: opts.block_size_kib,
        tar: true,
        force: true,
        seal: false,
        commit_sealed: false,
        compress_threads: 0,
        upload: None,
        turbo_oci: false,
        verbose: false,
    })
    .map_err(|e| fail(format!("committing: {e:#}")))?;
    for p in [&data, &idx, &config] {
        let _ = std::fs::remove_file(p);
    }
    let (digest, size) = file_digest(&out)?;
    Ok(Built { file: out, digest, size })
}
