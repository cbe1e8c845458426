//! `ctr-obd rpull` (`snapshotter.md` §10.1): under a lease, fetch the index, the host
//! platform's manifest and the config into containerd's content store (with the collector's
//! labels, no layer blobs), unpack the layers through the snapshotter (an overlaybd layer is
//! committed by the snapshotter itself and read lazily later), then record the image.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::bounded::{self, Cut};
use crate::cli::{parse_labels, RpullArgs};
use crate::containerd::{Containerd, QUICK};
use crate::content;
use crate::error::{Error, Result};
use crate::images;
use crate::manifest::{self, Kind, Manifest};
use crate::registry::{parse_reference, Registry};
use crate::unpack::{Layer, Unpacked, Unpacker, LABEL_DOWNLOAD, LABEL_IMAGE_REF, LABEL_PLAIN_HTTP};

/// How long the pull's lease outlives a crashed `ctr-obd`.
pub const LEASE_EXPIRE: Duration = Duration::from_secs(3600);

/// Runs `rpull`; the lines to print.
pub async fn run(address: &Path, namespace: &str, limit: Option<Duration>, args: &RpullArgs) -> Result<Vec<String>> {
    let reference = parse_reference(&args.reference)?;
    let image_labels = parse_labels(&args.labels).map_err(Error::Usage)?;
    if args.snapshotter.is_empty() {
        return Err(Error::Usage("--snapshotter is empty".into()));
    }
    let registry = Registry::new(reference, &args.reference, &args.registry)?;
    let mut cd = Containerd::connect(address, namespace).await?;
    cd.create_lease("ctr-obd-rpull", LEASE_EXPIRE).await?;
    let source = (format!("containerd.io/distribution.source.{}", registry.host()), registry.repository().to_string());
    let mut prepare_labels = HashMap::from([(LABEL_IMAGE_REF.to_string(), args.reference.clone())]);
    if args.download_blobs {
        prepare_labels.insert(LABEL_DOWNLOAD.to_string(), "download".to_string());
    }
    if args.registry.plain_http {
        prepare_labels.insert(LABEL_PLAIN_HTTP.to_string(), "true".to_string());
    }
    let mut unpacker = Unpacker {
        cd: &cd,
        snapshotter: &args.snapshotter,
        registry: Some(&registry),
        labels: prepare_labels,
        blob_labels: HashMap::from([source.clone()]),
        active: None,
    };
    let mut current = None;
    let outcome = bounded::run(limit, pull(&mut unpacker, args, &source, image_labels, &mut current)).await;
    // clean up whatever way the pull ended: the layer being applied and the lease
    let mut cleanup = Vec::new();
    let active = unpacker.active.take();
    if let Some(key) = &active {
        let removed = tokio::time::timeout(QUICK, unpacker.remove(key)).await;
        if !matches!(removed, Ok(Ok(()))) {
            cleanup.push(format!("the active snapshot {key:?} could not be removed"));
        }
    }
    drop(unpacker);
    if let Err(e) = cd.delete_lease().await {
        tracing::warn!("{e}");
    }
    let outcome = match outcome {
        Ok(r) => r,
        Err(cut) => {
            let during = match &current {
                Some(what) => format!(" while {what}"),
                None => String::new(),
            };
            let removed = match &active {
                Some(key) if cleanup.is_empty() => format!("; its active snapshot {key:?} was removed"),
                _ => String::new(),
            };
            Err(match cut {
                Cut::Timeout(d) => {
                    Error::Timeout { what: format!("rpull {}{during}{removed}", args.reference), after: d }
                }
                Cut::Interrupted => Error::Interrupted(format!("rpull {}{during}{removed}", args.reference)),
            })
        }
    };
    for c in &cleanup {
        tracing::warn!("{c}");
    }
    outcome
}

async fn pull(
    u: &mut Unpacker<'_>,
    args: &RpullArgs,
    source: &(String, String),
    image_labels: HashMap<String, String>,
    current: &mut Option<String>,
) -> Result<Vec<String>> {
    let shown = &args.reference;
    let reg = u.registry.ok_or_else(|| Error::Usage("rpull needs a registry".into()))?;
    let cd = u.cd;
    *current = Some("fetching the manifest".into());
    let (top_bytes, top_digest) = reg.top().await?;
    let top_doc = manifest::parse(&top_bytes, &format!("{shown}: the manifest"))?;
    let (top_kind, top_type) = manifest::kind(&top_doc, "", &format!("{shown}: the manifest"))?;
    let top = manifest::Descriptor {
        media_type: top_type,
        digest: top_digest.clone(),
        size: top_bytes.len() as u64,
        annotations: HashMap::new(),
    };
    let (manifest_desc, manifest_bytes, manifest_doc) = match top_kind {
        Kind::Manifest => (top.clone(), top_bytes.clone(), top_doc),
        Kind::Index => {
            let mut d = manifest::host_manifest(&top_doc, &format!("{shown}: the index"))?;
            let bytes = reg.manifest(&d).await?;
            let what = format!("{shown}: manifest {}", d.digest);
            let doc = manifest::parse(&bytes, &what)?;
            let (k, mt) = manifest::kind(&doc, &d.media_type, &what)?;
            if k != Kind::Manifest {
                return Err(Error::Image(format!("{what} is an index inside an index: not supported")));
            }
            d.media_type = mt;
            d.annotations.clear();
            (d, bytes, doc)
        }
    };
    let what = format!("{shown}: manifest {}", manifest_desc.digest);
    let m = Manifest::from_json(&manifest_doc, &what)?;
    *current = Some(format!("fetching config {}", m.config.digest));
    let config = reg.small_blob(&m.config).await?;
    let diff_ids = convertor::image::diff_ids(&config)
        .map_err(|e| Error::Image(format!("{shown}: config {}: {e}", m.config.digest)))?;
    if diff_ids.len() != m.layers.len() {
        return Err(Error::Image(format!(
            "{what} lists {} layers but its config {} diff IDs",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    let chain_ids = convertor::chain::chain_ids(&diff_ids);

    // the documents, with the labels containerd's collector follows
    *current = Some("writing the image documents into containerd's content store".into());
    let mut labels = HashMap::from([source.clone()]);
    if let Some(top_chain) = chain_ids.last() {
        labels.insert(format!("containerd.io/gc.ref.snapshot.{}", u.snapshotter), top_chain.clone());
    }
    content::write_bytes(cd, &m.config.media_type, &config, &labels).await?;
    let mut labels = HashMap::from([source.clone()]);
    labels.insert("containerd.io/gc.ref.content.config".into(), m.config.digest.clone());
    for (i, l) in m.layers.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
    }
    content::write_bytes(cd, &manifest_desc.media_type, &manifest_bytes, &labels).await?;
    if top_kind == Kind::Index {
        let labels = HashMap::from([
            source.clone(),
            ("containerd.io/gc.ref.content.m.0".to_string(), manifest_desc.digest.clone()),
        ]);
        content::write_bytes(cd, &top.media_type, &top_bytes, &labels).await?;
    }

    // the layers
    let mut out = Vec::new();
    for (i, desc) in m.layers.iter().enumerate() {
        *current = Some(format!("unpacking layer {i} ({})", desc.digest));
        let layer = Layer {
            index: i,
            desc,
            diff_id: &diff_ids[i],
            chain_id: &chain_ids[i],
            parent: if i == 0 { "" } else { &chain_ids[i - 1] },
        };
        let how = u.unpack(&layer).await?;
        let said = match how {
            Unpacked::Existed => "already unpacked",
            Unpacked::Remote => "committed by the snapshotter (remote, not downloaded)",
            Unpacked::Applied => "downloaded and applied",
        };
        tracing::info!(layer = i, blob = %desc.digest, "{said}");
        out.push(format!("layer {i} {}: {said}", desc.digest));
    }
    *current = Some("recording the image".into());
    images::put(cd, shown, &top, image_labels).await?;
    *current = None;
    out.push("done".into());
    Ok(out)
}
