//! Image documents: media types, descriptors, the host platform's manifest in an index, and
//! the parts of a manifest the commands use.

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What a pull accepts, in order of preference.
pub const ACCEPTED: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Largest index, manifest or config read into memory.
pub const MAX_DOCUMENT: u64 = 16 << 20;

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:...`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    pub annotations: HashMap<String, String>,
}

impl Descriptor {
    /// Parses a descriptor of `what`.
    pub fn from_json(v: &Value, what: &str) -> Result<Descriptor> {
        let bad = |m: &str| Error::Image(format!("{what}: {m}"));
        let digest = v.get("digest").and_then(Value::as_str).ok_or_else(|| bad("no digest"))?;
        if !is_sha256(digest) {
            return Err(bad(&format!("unsupported digest {digest:?}")));
        }
        let size = v.get("size").and_then(Value::as_u64).ok_or_else(|| bad("no size"))?;
        let annotations = v
            .get("annotations")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
            .unwrap_or_default();
        Ok(Descriptor {
            media_type: v.get("mediaType").and_then(Value::as_str).unwrap_or_default().to_string(),
            digest: digest.to_string(),
            size,
            annotations,
        })
    }

    /// As containerd's descriptor.
    pub fn to_containerd(&self) -> containerd_client::types::Descriptor {
        containerd_client::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: i64::try_from(self.size).unwrap_or(i64::MAX),
            annotations: self.annotations.clone(),
        }
    }

    /// From containerd's descriptor.
    pub fn from_containerd(d: &containerd_client::types::Descriptor) -> Descriptor {
        Descriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: u64::try_from(d.size).unwrap_or(0),
            annotations: d.annotations.clone(),
        }
    }
}

/// Whether `d` is a well-formed `sha256:` digest.
pub fn is_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// `sha256:` digest of bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Parses a JSON object.
pub fn parse(bytes: &[u8], what: &str) -> Result<Value> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::Image(format!("{what} is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::Image(format!("{what} is not a JSON object")));
    }
    Ok(v)
}

/// Whether a document is an index (manifest list) or a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// OCI index or Docker manifest list.
    Index,
    /// OCI or Docker schema 2 manifest.
    Manifest,
}

/// The kind and media type of a document, from `media_type` (as served or recorded) or else
/// its `mediaType` field or shape.
pub fn kind(doc: &Value, media_type: &str, what: &str) -> Result<(Kind, String)> {
    let mt = if media_type.is_empty() || media_type == "application/json" {
        match doc.get("mediaType").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None if doc.get("manifests").is_some() => OCI_INDEX.to_string(),
            None if doc.get("layers").is_some() => OCI_MANIFEST.to_string(),
            None => return Err(Error::Image(format!("{what} is neither an index nor a manifest"))),
        }
    } else {
        media_type.to_string()
    };
    match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => Ok((Kind::Index, mt)),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok((Kind::Manifest, mt)),
        other => Err(Error::Image(format!("{what} has the unsupported media type {other:?}"))),
    }
}

/// The host platform as OCI names it: (`linux`, `amd64` ...).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    (std::env::consts::OS, arch)
}

/// The descriptor of the host platform's manifest in `index`.
pub fn host_manifest(index: &Value, what: &str) -> Result<Descriptor> {
    let (os, arch) = host_platform();
    let list = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Image(format!("{what}: the index lists no manifests")))?;
    let mut seen = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let p = m.get("platform");
        let pos = p.and_then(|p| p.get("os")).and_then(Value::as_str).unwrap_or("");
        let parch = p.and_then(|p| p.get("architecture")).and_then(Value::as_str).unwrap_or("");
        if pos == os && parch == arch {
            return Descriptor::from_json(m, &format!("{what}: manifest {i}"));
        }
        seen.push(format!("{pos}/{parch}"));
    }
    Err(Error::Image(format!("{what} has no manifest for {os}/{arch} (it has {})", seen.join(", "))))
}

/// The parts of a manifest the commands use.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The config's descriptor.
    pub config: Descriptor,
    /// The layers', bottom first.
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// Reads them from a manifest document.
    pub fn from_json(doc: &Value, what: &str) -> Result<Manifest> {
        let config = Descriptor::from_json(
            doc.get("config").ok_or_else(|| Error::Image(format!("{what} has no config")))?,
            &format!("{what}: config"),
        )?;
        let layers = doc
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Image(format!("{what} has no layers")))?
            .iter()
            .enumerate()
            .map(|(i, l)| Descriptor::from_json(l, &format!("{what}: layer {i}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Manifest { config, layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    #[test]
    fn the_host_manifest_is_chosen_from_an_index() {
        let (os, arch) = host_platform();
        let idx = serde_json::json!({"manifests": [
            {"digest": d('a'), "size": 1, "platform": {"os": "windows", "architecture": arch}},
            {"digest": d('b'), "size": 2, "platform": {"os": os, "architecture": arch}},
        ]});
        assert_eq!(host_manifest(&idx, "x").unwrap().digest, d('b'));
        let idx = serde_json::json!({"manifests": [{"digest": d('a'), "size": 1, "platform": {"os": "plan9", "architecture": "mips"}}]});
        let e = host_manifest(&idx, "img").unwrap_err().to_string();
        assert!(e.contains("plan9/mips") && e.contains("img"), "{e}");
    }

    #[test]
    fn kinds_come_from_media_types_or_shape() {
        let v = serde_json::json!({"manifests": []});
        assert_eq!(kind(&v, "", "x").unwrap().0, Kind::Index);
        let v = serde_json::json!({"mediaType": DOCKER_MANIFEST, "layers": []});
        assert_eq!(kind(&v, "", "x").unwrap(), (Kind::Manifest, DOCKER_MANIFEST.to_string()));
        assert!(kind(&v, "text/plain", "x").is_err());
        assert!(kind(&serde_json::json!({}), "", "x").is_err());
    }

    #[test]
    fn descriptors_need_a_sha256_digest_and_a_size() {
        let ok = serde_json::json!({"mediaType": "m", "digest": d('c'), "size": 3, "annotations": {"k": "v"}});
        let desc = Descriptor::from_json(&ok, "x").unwrap();
        assert_eq!(desc.annotations["k"], "v");
        assert_eq!(Descriptor::from_containerd(&desc.to_containerd()), desc);
        assert!(Descriptor::from_json(&serde_json::json!({"digest": "md5:x", "size": 1}), "x").is_err());
        assert!(Descriptor::from_json(&serde_json::json!({"digest": d('c')}), "x").is_err());
        let m = serde_json::json!({"config": ok, "layers": [ok, ok]});
        assert_eq!(Manifest::from_json(&m, "x").unwrap().layers.len(), 2);
    }
}
