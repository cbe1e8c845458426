//! `ctr-obd obdconv` (`snapshotter.md` §10.3), in user space: the source image's layers are read
//! from containerd's content store, built into overlaybd layers with the convertor (no
//! snapshotter, no devices), and the new layers, config and manifest are written back under a
//! lease; the converted image gets its own record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use convertor::image::{MediaTypes, ANNOTATION_BLOB_DIGEST};
use convertor::layer::{Built, Options};
use serde_json::Value;

use crate::bounded::{self, Cut};
use crate::cli::ObdconvArgs;
use crate::containerd::{unique, Containerd};
use crate::content;
use crate::error::{Error, Result};
use crate::images;
use crate::manifest::{self, Descriptor, Kind, Manifest, DOCKER_MANIFEST};

/// The annotation with the filesystem of an overlaybd layer.
pub const ANNOTATION_FS_TYPE: &str = "containerd.io/snapshot/overlaybd/blob-fs-type";
/// How long the conversion's lease outlives a crashed `ctr-obd`.
pub const LEASE_EXPIRE: Duration = Duration::from_secs(3600);
/// How long a conversion cut short waits for the layer build in flight (which cannot be
/// stopped) before it removes the work directory.
pub const BUILD_GRACE: Duration = Duration::from_secs(120);

/// The layer build running on a blocking thread.
type Building = Option<tokio::task::JoinHandle<convertor::Result<Built>>>;

/// The checked options of a conversion.
#[derive(Clone, Debug)]
pub struct Plan {
    /// How layers are built.
    pub options: Options,
    /// The `blob-fs-type` annotation.
    pub fstype: String,
}

/// Checks the flags: what this build can honour, and nothing else.
pub fn plan(args: &ObdconvArgs) -> Result<Plan> {
    if args.dbstr.is_some() {
        return Err(Error::Usage(
            "--dbstr: the layer deduplication database is not supported by ctr-obd obdconv".into(),
        ));
    }
    let mut parts = args.fstype.split(';');
    let fs = parts.next().unwrap_or_default();
    let _mount_options = parts.next();
    let mkfs_options = parts.next().unwrap_or_default();
    if fs != "ext4" || !mkfs_options.is_empty() || parts.next().is_some() {
        return Err(Error::Usage(format!(
            "--fstype {:?}: only ext4 (optionally \"ext4;<mount options>\") is built by ctr-obd obdconv",
            args.fstype
        )));
    }
    if args.algorithm != "lz4" && args.algorithm != "zstd" {
        return Err(Error::Usage(format!("--algorithm {:?}: use lz4 or zstd", args.algorithm)));
    }
    let bs = args.block_size_kib;
    if !(4..=64).contains(&bs) || !bs.is_power_of_two() {
        return Err(Error::Usage(format!("--bs {bs}: the block size is 4, 8, 16, 32 or 64 (KiB)")));
    }
    if args.vsize == 0 {
        return Err(Error::Usage("--vsize 0: the virtual size is at least 1 GB".into()));
    }
    if args.src.is_empty() || args.dst.is_empty() {
        return Err(Error::Usage("obdconv needs a source and a destination image name".into()));
    }
    if args.src == args.dst {
        return Err(Error::Usage(format!("obdconv {0} {0}: the destination must differ from the source", args.src)));
    }
    Ok(Plan {
        options: Options { vsize_gb: args.vsize, sparse: true, algorithm: args.algorithm.clone(), block_size_kib: bs },
        fstype: args.fstype.clone(),
    })
}

/// Runs `obdconv`; the lines to print.
pub async fn run(address: &Path, namespace: &str, limit: Option<Duration>, args: &ObdconvArgs) -> Result<Vec<String>> {
    let plan = plan(args)?;
    let mut cd = Containerd::connect(address, namespace).await?;
    cd.create_lease("overlaybd-conv", LEASE_EXPIRE).await?;
    let work = std::env::temp_dir().join(format!("ctr-obd-conv-{}", unique()));
    let mut current = None;
    let mut building: Building = None;
    let outcome = match std::fs::create_dir_all(&work) {
        Err(e) => Ok(Err(Error::io(work.display(), e))),
        Ok(()) => bounded::run(limit, convert(&cd, args, &plan, &work, &mut current, &mut building)).await,
    };
    if let Some(b) = building.take() {
        tracing::info!("waiting for the layer build in flight to end");
        if tokio::time::timeout(BUILD_GRACE, b).await.is_err() {
            tracing::warn!("the layer build in flight did not end within {} s", BUILD_GRACE.as_secs());
        }
    }
    remove_work_dir(&work);
    if let Err(e) = cd.delete_lease().await {
        tracing::warn!("{e}");
    }
    match outcome {
        Ok(r) => r,
        Err(cut) => {
            let during = current.map(|w| format!(" while {w}")).unwrap_or_default();
            let what = format!("obdconv {} {}{during}", args.src, args.dst);
            Err(match cut {
                Cut::Timeout(after) => Error::Timeout { what, after },
                Cut::Interrupted => Error::Interrupted(what),
            })
        }
    }
}

/// Removes the work directory (a few tries: a build cut short may still be writing into it).
fn remove_work_dir(work: &Path) {
    for attempt in 0..5 {
        match std::fs::remove_dir_all(work) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 4 => tracing::warn!("removing the work directory {}: {e}", work.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

async fn convert(
    cd: &Containerd,
    args: &ObdconvArgs,
    plan: &Plan,
    work: &Path,
    current: &mut Option<String>,
    building: &mut Building,
) -> Result<Vec<String>> {
    let src = &args.src;
    let image = images::get(cd, src).await?.ok_or_else(|| {
        Error::Image(format!(
            "image {src} is not in containerd's namespace {:?}: pull it first (ctr image pull)",
            cd.namespace()
        ))
    })?;
    let target = image
        .target
        .as_ref()
        .map(Descriptor::from_containerd)
        .ok_or_else(|| Error::Image(format!("image {src} has no target")))?;
    *current = Some(format!("reading {src}'s manifest"));
    let top = read_document(cd, src, &target).await?;
    let what = format!("{src}: {}", target.digest);
    let top_doc = manifest::parse(&top, &what)?;
    let (manifest_bytes, manifest_desc) = match manifest::kind(&top_doc, &target.media_type, &what)?.0 {
        Kind::Manifest => (top, target),
        Kind::Index => {
            let d = manifest::host_manifest(&top_doc, &format!("{src}: the index"))?;
            (read_document(cd, src, &d).await?, d)
        }
    };
    let what = format!("{src}: manifest {}", manifest_desc.digest);
    let m = Manifest::from_json(&manifest::parse(&manifest_bytes, &what)?, &what)?;
    if m.layers.iter().any(|l| l.annotations.contains_key(ANNOTATION_BLOB_DIGEST)) {
        return Err(Error::Image(format!(
            "{src} is already an overlaybd image (its layers have {ANNOTATION_BLOB_DIGEST})"
        )));
    }
    let config = read_document(cd, src, &m.config).await?;
    let diff_ids = convertor::image::diff_ids(&config)
        .map_err(|e| Error::Image(format!("{src}: config {}: {e}", m.config.digest)))?;
    if diff_ids.len() != m.layers.len() {
        return Err(Error::Image(format!(
            "{what} lists {} layers but its config {} diff IDs",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    if m.layers.is_empty() {
        return Err(Error::Image(format!("{what} has no layers: nothing to convert")));
    }
    let chain_ids = convertor::chain::chain_ids(&diff_ids);
    // every layer blob must be here before any work is done
    for (i, l) in m.layers.iter().enumerate() {
        if content::info(cd, &l.digest).await?.is_none() {
            return Err(Error::Image(format!(
                "{src}: layer {i} blob {} is not in containerd's content store (the image was pulled lazily, e.g. \
                 with rpull): pull it in full (ctr image pull) before converting",
                l.digest
            )));
        }
    }

    let mut built: Vec<Built> = Vec::new();
    let mut descriptors = Vec::new();
    for (i, l) in m.layers.iter().enumerate() {
        *current = Some(format!("converting layer {i} ({})", l.digest));
        let blob = work.join(format!("source-{i}"));
        content::read_to_file(cd, l, &blob).await?;
        let dir = work.join(format!("layer-{i}"));
        let lowers: Vec<PathBuf> = built.iter().map(|b| b.file.clone()).collect();
        let (diff_id, chains, opts, b) = (diff_ids[i].clone(), chain_ids.clone(), plan.options.clone(), blob.clone());
        let task = building.insert(tokio::task::spawn_blocking(move || {
            convertor::layer::build(&dir, i, &b, &diff_id, &chains, &lowers, &opts)
        }));
        let b = task
            .await
            .map_err(|e| Error::Image(format!("{src}: layer {i}: the build task failed: {e}")))?
            .map_err(|source| Error::Convert { image: src.clone(), source })?;
        *building = None;
        let _ = std::fs::remove_file(&blob);
        let desc = layer_descriptor(&b, &plan.fstype)?;
        content::write_file(cd, &b.file, &desc, &HashMap::new()).await?;
        tracing::info!(layer = i, from = %l.digest, to = %b.digest, "layer converted");
        descriptors.push(desc);
        built.push(b);
    }

    *current = Some("writing the converted config and manifest".into());
    let new_config =
        convertor::image::config(&config, &built).map_err(|source| Error::Convert { image: src.clone(), source })?;
    let config_desc = content::write_bytes(cd, &m.config.media_type, &new_config, &HashMap::new()).await?;
    let new_manifest = converted_manifest(&manifest_bytes, &new_config, &built, &config_desc, &descriptors)
        .map_err(|source| Error::Convert { image: src.clone(), source })?;
    let mut labels = HashMap::from([("containerd.io/gc.ref.content.config".to_string(), config_desc.digest.clone())]);
    for (i, d) in descriptors.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), d.digest.clone());
    }
    let manifest_out = content::write_bytes(cd, DOCKER_MANIFEST, &new_manifest, &labels).await?;
    *current = Some(format!("recording image {}", args.dst));
    images::put(cd, &args.dst, &manifest_out, image.labels.clone()).await?;
    *current = None;
    Ok(vec![format!("new image digest: {}", manifest_out.digest)])
}

/// A document (index, manifest, config) of `image` from the content store.
pub(crate) async fn read_document(cd: &Containerd, image: &str, d: &Descriptor) -> Result<Vec<u8>> {
    match content::read_all(cd, d).await {
        Err(e) if e.code() == Some(containerd_client::tonic::Code::NotFound) => Err(Error::Image(format!(
            "{image}: {} is not in containerd's content store (pull the image again)",
            d.digest
        ))),
        r => r,
    }
}

/// The descriptor of a built layer: OCI tar media type, the overlaybd annotations and the
/// filesystem type (`snapshotter.md` §1.3, obdconv).
pub fn layer_descriptor(b: &Built, fstype: &str) -> Result<Descriptor> {
    let mut v = convertor::image::layer_descriptor(b, MediaTypes { oci: true });
    v["annotations"][ANNOTATION_FS_TYPE] = Value::String(fstype.to_string());
    Descriptor::from_json(&v, &format!("built layer {}", b.digest))
}

/// The converted manifest: Docker schema 2 (as the reference writes it), the source's config
/// media type, the overlaybd layers; other fields as in the source.
pub fn converted_manifest(
    src: &[u8],
    config: &[u8],
    built: &[Built],
    config_desc: &Descriptor,
    layers: &[Descriptor],
) -> convertor::Result<Vec<u8>> {
    let base = convertor::image::manifest(src, config, built, MediaTypes { oci: false })?;
    let mut v: Value = serde_json::from_slice(&base)
        .map_err(|e| convertor::Error::Image(format!("re-reading the converted manifest: {e}")))?;
    v["config"]["mediaType"] = Value::String(config_desc.media_type.clone());
    v["layers"] = Value::Array(
        layers
            .iter()
            .map(|d| {
                serde_json::json!({
                    "mediaType": d.media_type,
                    "digest": d.digest,
                    "size": d.size,
                    "annotations": d.annotations,
                })
            })
            .collect(),
    );
    serde_json::to_vec(&v).map_err(|e| convertor::Error::Image(format!("encoding the manifest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ObdconvArgs {
        let mut v = vec!["ctr-obd", "obdconv"];
        v.extend_from_slice(extra);
        v.extend_from_slice(&["a", "b"]);
        match crate::cli::Cli::try_parse_from(v).unwrap().command {
            crate::cli::Command::Obdconv(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn only_what_can_be_honoured_is_accepted() {
        let p = plan(&args(&["--algorithm", "zstd", "--bs", "64", "--vsize", "8", "-k", "--plain-http"])).unwrap();
        assert_eq!((p.options.algorithm.as_str(), p.options.block_size_kib, p.options.vsize_gb), ("zstd", 64, 8));
        assert!(plan(&args(&["--fstype", "ext4;discard"])).is_ok());
        for bad in [
            &["--dbstr", "u:p@tcp(db)/x"][..],
            &["--fstype", "xfs"],
            &["--fstype", "ext4;;-O ^has_journal"],
            &["--algorithm", "gzip"],
            &["--bs", "3"],
            &["--bs", "128"],
            &["--vsize", "0"],
        ] {
            assert!(plan(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_manifest_is_docker_with_oci_tar_layers() {
        let b = Built { file: "/x".into(), digest: format!("sha256:{}", "b".repeat(64)), size: 7 };
        let d = layer_descriptor(&b, "ext4").unwrap();
        assert_eq!(d.media_type, "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(d.annotations[ANNOTATION_FS_TYPE], "ext4");
        assert_eq!(d.annotations[ANNOTATION_BLOB_DIGEST], b.digest);
        let cfg_desc = Descriptor {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            digest: manifest::digest_of(b"{}"),
            size: 2,
            annotations: HashMap::new(),
        };
        let src = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}]}"#;
        let out = converted_manifest(src, b"{}", std::slice::from_ref(&b), &cfg_desc, &[d]).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["mediaType"], DOCKER_MANIFEST);
        assert_eq!(v["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
        assert_eq!(v["config"]["digest"], cfg_desc.digest);
        assert_eq!(v["layers"][0]["annotations"][ANNOTATION_FS_TYPE], "ext4");
        assert_eq!(v["layers"][0]["size"], 7);
    }
}
