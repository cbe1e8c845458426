//! The converted image's config and manifest (`snapshotter.md` §1.3, §11.3): the source
//! documents with the layers replaced. Unlike the reference (which re-serialises through typed
//! structs and drops unknown fields), every field this code does not change is kept as it was.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::layer::Built;

/// Annotation keys on an overlaybd layer descriptor.
pub const ANNOTATION_VERSION: &str = "containerd.io/snapshot/overlaybd/version";
/// The blob's digest.
pub const ANNOTATION_BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
/// The blob's size.
pub const ANNOTATION_BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";

/// OCI or Docker media types for what the convertor writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaTypes {
    /// `--oci`.
    pub oci: bool,
}

impl MediaTypes {
    /// The manifest's.
    pub fn manifest(self) -> &'static str {
        if self.oci {
            "application/vnd.oci.image.manifest.v1+json"
        } else {
            "application/vnd.docker.distribution.manifest.v2+json"
        }
    }
    /// The config's.
    pub fn config(self) -> &'static str {
        if self.oci {
            "application/vnd.oci.image.config.v1+json"
        } else {
            "application/vnd.docker.container.image.v1+json"
        }
    }
    /// An overlaybd layer's (an uncompressed tar).
    pub fn layer(self) -> &'static str {
        if self.oci {
            "application/vnd.oci.image.layer.v1.tar"
        } else {
            "application/vnd.docker.image.rootfs.diff.tar"
        }
    }
}

/// `sha256:` digest of bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn parse(what: &str, bytes: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::Image(format!("{what} is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::Image(format!("{what} is not a JSON object")));
    }
    Ok(v)
}

/// The source config's diff IDs, bottom first.
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>> {
    let v = parse("the image config", config)?;
    let ids = v
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Image("the image config has no rootfs.diff_ids".into()))?;
    ids.iter()
        .map(|d| {
            d.as_str()
                .filter(|s| {
                    s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                })
                .map(str::to_string)
                .ok_or_else(|| Error::Image(format!("the image config has a malformed diff ID {d}")))
        })
        .collect()
}

/// The converted config: the source's with `rootfs.diff_ids` = the built layers' digests.
pub fn config(src: &[u8], layers: &[Built]) -> Result<Vec<u8>> {
    let mut v = parse("the image config", src)?;
    let ids: Vec<Value> = layers.iter().map(|l| Value::String(l.digest.clone())).collect();
    v["rootfs"] = json!({ "type": "layers", "diff_ids": ids });
    serde_json::to_vec(&v).map_err(|e| Error::Image(format!("encoding the config: {e}")))
}

/// The descriptor of a built layer, with the overlaybd annotations.
pub fn layer_descriptor(l: &Built, mt: MediaTypes) -> Value {
    json!({
        "mediaType": mt.layer(),
        "digest": l.digest,
        "size": l.size,
        "annotations": {
            ANNOTATION_VERSION: "0.1.0",
            ANNOTATION_BLOB_DIGEST: l.digest,
            ANNOTATION_BLOB_SIZE: l.size.to_string(),
        }
    })
}

/// The converted manifest: the source's with the new config descriptor, the built layers and
/// the media type of `mt`.
pub fn manifest(src: &[u8], config: &[u8], layers: &[Built], mt: MediaTypes) -> Result<Vec<u8>> {
    let mut v = parse("the manifest", src)?;
    if v.get("layers").and_then(Value::as_array).map(Vec::len) != Some(layers.len()) {
        return Err(Error::Image(format!("the manifest does not list {} layers", layers.len())));
    }
    v["schemaVersion"] = json!(2);
    v["mediaType"] = json!(mt.manifest());
    v["config"] = json!({
        "mediaType": mt.config(),
        "digest": digest_of(config),
        "size": config.len(),
    });
    v["layers"] = Value::Array(layers.iter().map(|l| layer_descriptor(l, mt)).collect());
    serde_json::to_vec(&v).map_err(|e| Error::Image(format!("encoding the manifest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(n: u8) -> Built {
        Built { file: "/x".into(), digest: format!("sha256:{}", hex::encode([n; 32])), size: 1000 + u64::from(n) }
    }

    #[test]
    fn documents_keep_what_they_do_not_change() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","x-extra":1,"rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#
        );
        assert_eq!(diff_ids(cfg.as_bytes()).unwrap(), vec![d.clone()]);
        let out = config(cfg.as_bytes(), &[built(1)]).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["x-extra"], 1);
        assert_eq!(v["rootfs"]["diff_ids"][0], built(1).digest);
        let m = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}],"annotations":{"a":"b"}}"#;
        let out = manifest(m.as_bytes(), b"{}", &[built(1)], MediaTypes { oci: false }).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
        assert_eq!(v["annotations"]["a"], "b");
        assert_eq!(v["layers"][0]["annotations"][ANNOTATION_BLOB_SIZE], "1001");
        assert_eq!(v["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar");
        // bad input
        assert!(diff_ids(b"[]").is_err());
        assert!(diff_ids(br#"{"rootfs":{"diff_ids":["sha256:zz"]}}"#).is_err());
        assert!(manifest(m.as_bytes(), b"{}", &[built(1), built(2)], MediaTypes { oci: true }).is_err());
    }
}
