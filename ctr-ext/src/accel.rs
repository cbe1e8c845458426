//! The acceleration layer of `record-trace` (`snapshotter.md` §10.4 steps 4–5): a tar holding
//! the single file `trace`, its descriptor, and the new config and manifest with it on top.

use std::collections::HashMap;

use convertor::image::ANNOTATION_BLOB_DIGEST;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::manifest::{digest_of, Descriptor};
use crate::obdconv::ANNOTATION_FS_TYPE;

/// Media type of the layer (always OCI tar, as the reference writes it).
pub const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The layer annotation marking an acceleration layer.
pub const ANNOTATION_ACCELERATION_LAYER: &str = "containerd.io/snapshot/overlaybd/acceleration-layer";
/// The overlaybd layer format version annotation.
pub const ANNOTATION_VERSION: &str = "containerd.io/snapshot/overlaybd/version";
/// The blob size annotation.
pub const ANNOTATION_BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
/// The name of the trace inside the layer.
pub const ENTRY: &str = "trace";
/// `created_by` of the history entry.
pub const CREATED_BY: &str = "Acceleration Layer";

/// The layer: a USTAR archive of one regular file `trace` (mode 0444, owner 0, time 0, no user
/// or group names), as Go's `archive/tar` writes the reference's, then two zero blocks.
pub fn layer_tar(trace: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    let octal = |width: usize, v: u64| format!("{v:0w$o}\0", w = width - 1).into_bytes();
    put(&mut h, 0, ENTRY.as_bytes());
    put(&mut h, 100, &octal(8, 0o444));
    put(&mut h, 108, &octal(8, 0));
    put(&mut h, 116, &octal(8, 0));
    put(&mut h, 124, &octal(12, trace.len() as u64));
    put(&mut h, 136, &octal(12, 0));
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    put(&mut h, 329, &octal(8, 0));
    put(&mut h, 337, &octal(8, 0));
    put(&mut h, 148, b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    put(&mut h, 148, &octal(7, sum));
    let padded = trace.len().div_ceil(512) * 512;
    let mut out = Vec::with_capacity(512 + padded + 1024);
    out.extend_from_slice(&h);
    out.extend_from_slice(trace);
    out.resize(512 + padded + 1024, 0);
    out
}

/// The layer's descriptor: OCI tar with the overlaybd annotations, `acceleration-layer: yes`
/// and the file system of the image below when it is known.
pub fn layer_descriptor(tar: &[u8], fs_type: &str) -> Descriptor {
    let digest = digest_of(tar);
    let mut annotations = HashMap::from([
        (ANNOTATION_VERSION.to_string(), "0.1.0".to_string()),
        (ANNOTATION_BLOB_DIGEST.to_string(), digest.clone()),
        (ANNOTATION_BLOB_SIZE.to_string(), tar.len().to_string()),
        (ANNOTATION_ACCELERATION_LAYER.to_string(), "yes".to_string()),
    ]);
    if !fs_type.is_empty() {
        annotations.insert(ANNOTATION_FS_TYPE.to_string(), fs_type.to_string());
    }
    Descriptor { media_type: MEDIA_TYPE.to_string(), digest, size: tar.len() as u64, annotations }
}

/// The new config: `{created: now, created_by: "Acceleration Layer"}` prepended to the
/// history, the layer's diff ID (its digest: the tar is not compressed) appended, `created` =
/// now; the rest as in `old`.
pub fn config(old: &[u8], layer: &Descriptor, now: &str, what: &str) -> Result<Vec<u8>> {
    let mut v = crate::manifest::parse(old, what)?;
    let diff_ids = v
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::Image(format!("{what} has no rootfs.diff_ids")))?;
    diff_ids.push(Value::String(layer.digest.clone()));
    let entry = serde_json::json!({"created": now, "created_by": CREATED_BY});
    match v.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.insert(0, entry),
        None => v["history"] = Value::Array(vec![entry]),
    }
    v["created"] = Value::String(now.to_string());
    serde_json::to_vec(&v).map_err(|e| Error::Image(format!("encoding the new config: {e}")))
}

/// The new manifest: `old` with the new config and the layer on top; its `mediaType` is the old
/// manifest's (or `media_type`, the old descriptor's, when the document has none).
pub fn manifest(old: &[u8], media_type: &str, config: &Descriptor, layer: &Descriptor, what: &str) -> Result<Vec<u8>> {
    let mut v = crate::manifest::parse(old, what)?;
    let layers = v
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::Image(format!("{what} has no layers")))?;
    layers.push(serde_json::json!({
        "mediaType": layer.media_type,
        "digest": layer.digest,
        "size": layer.size,
        "annotations": layer.annotations,
    }));
    v["config"] = serde_json::json!({"mediaType": config.media_type, "digest": config.digest, "size": config.size});
    if v.get("mediaType").and_then(Value::as_str).is_none_or(str::is_empty) {
        v["mediaType"] = Value::String(media_type.to_string());
    }
    serde_json::to_vec(&v).map_err(|e| Error::Image(format!("encoding the new manifest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_is_a_tar_of_one_read_only_file() {
        let trace = b"0123456789".repeat(60);
        let t = layer_tar(&trace);
        assert_eq!(t.len(), 512 + 1024 + 1024);
        let mut a = tar::Archive::new(&t[..]);
        let mut entries = a.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        let h = e.header().clone();
        assert_eq!(h.path().unwrap().to_str(), Some(ENTRY));
        assert_eq!(h.mode().unwrap(), 0o444);
        assert_eq!(h.entry_type(), tar::EntryType::Regular);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 0));
        assert_eq!(h.as_ustar().map(|u| (u.username_bytes().len(), u.groupname_bytes().len())), Some((0, 0)));
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut got).unwrap();
        assert_eq!(got, trace);
        drop(e);
        assert!(entries.next().is_none());
        // Go's archive/tar header checksum field: six octal digits, NUL, space
        assert_eq!(&t[154..156], b"\0 ");
        assert_eq!(
            h.cksum().unwrap(),
            t[..512]
                .iter()
                .enumerate()
                .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) })
                .sum::<u32>()
        );
        // an empty trace is one header and the end blocks
        assert_eq!(layer_tar(b"").len(), 1536);
    }

    #[test]
    fn the_descriptor_says_acceleration_layer() {
        let t = layer_tar(b"x");
        let d = layer_descriptor(&t, "ext4");
        assert_eq!(d.media_type, MEDIA_TYPE);
        assert_eq!(d.annotations[ANNOTATION_ACCELERATION_LAYER], "yes");
        assert_eq!(d.annotations[ANNOTATION_BLOB_DIGEST], d.digest);
        assert_eq!(d.annotations[ANNOTATION_BLOB_SIZE], t.len().to_string());
        assert_eq!(d.annotations[ANNOTATION_VERSION], "0.1.0");
        assert_eq!(d.annotations[ANNOTATION_FS_TYPE], "ext4");
        assert!(!layer_descriptor(&t, "").annotations.contains_key(ANNOTATION_FS_TYPE));
    }

    #[test]
    fn config_and_manifest_get_the_layer_on_top() {
        let l = layer_descriptor(&layer_tar(b"x"), "");
        let old = br#"{"architecture":"amd64","config":{"Cmd":["/bin/sh"]},"created":"2020-01-01T00:00:00Z",
            "history":[{"created_by":"base"}],"rootfs":{"type":"layers","diff_ids":["sha256:a"]}}"#;
        let c: Value = serde_json::from_slice(&config(old, &l, "2024-05-06T07:08:09Z", "c").unwrap()).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"], serde_json::json!(["sha256:a", l.digest]));
        assert_eq!(c["history"][0], serde_json::json!({"created": "2024-05-06T07:08:09Z", "created_by": CREATED_BY}));
        assert_eq!(c["history"][1]["created_by"], "base");
        assert_eq!(c["created"], "2024-05-06T07:08:09Z");
        assert_eq!(c["config"]["Cmd"][0], "/bin/sh");
        let bare = br#"{"rootfs":{"diff_ids":[]}}"#;
        let c: Value = serde_json::from_slice(&config(bare, &l, "t", "c").unwrap()).unwrap();
        assert_eq!(c["history"].as_array().unwrap().len(), 1);
        assert!(config(b"{}", &l, "t", "c").is_err());

        let cfg =
            Descriptor { media_type: "cfg".into(), digest: "sha256:c".into(), size: 3, annotations: HashMap::new() };
        let old = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"cfg","digest":"sha256:o","size":1},"layers":[{"mediaType":"m","digest":"sha256:a","size":1}]}"#;
        let m: Value = serde_json::from_slice(&manifest(old, "x", &cfg, &l, "m").unwrap()).unwrap();
        assert_eq!(m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
        assert_eq!(m["config"]["digest"], "sha256:c");
        assert_eq!(m["layers"][0]["digest"], "sha256:a");
        assert_eq!(m["layers"][1]["digest"], l.digest);
        assert_eq!(m["layers"][1]["annotations"][ANNOTATION_ACCELERATION_LAYER], "yes");
        let oci = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let m: Value = serde_json::from_slice(
            &manifest(oci, "application/vnd.oci.image.manifest.v1+json", &cfg, &l, "m").unwrap(),
        )
        .unwrap();
        assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    }
}
