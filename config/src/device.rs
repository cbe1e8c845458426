//! `config.v1.json`: what one virtual block device is made of.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading a device config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("{path}: cannot read the device config: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON for this schema.
    #[error("{path}: invalid device config: {source}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// A per-device config (`config.v1.json`). Unknown keys are ignored; missing keys take the
/// defaults of the reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceConfig {
    /// Prefix of remote layer URLs, e.g. `https://registry/v2/library/app/blobs`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub repo_blob_url: String,
    /// Read-only layers, bottom first.
    pub lowers: Vec<LowerLayer>,
    /// The writable layer (used only if both `index` and `data` are set).
    #[serde(skip_serializing_if = "UpperLayer::is_empty")]
    pub upper: UpperLayer,
    /// File that receives `success` or `failed:<reason>` after the device is opened.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub result_file: String,
    /// Background download settings (kept as given; used by the remote-layer code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<serde_json::Value>,
    /// The last lower is an acceleration layer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub acceleration_layer: bool,
    /// Trace recording / replay path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub record_trace_path: String,
}

/// One read-only layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LowerLayer {
    /// Local path of the layer blob (any wrapping).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// Local directory holding `overlaybd.commit` (or `.commit`, `overlaybd.sealed`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// `sha256:<hex>` of the registry blob.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Registry blob size in bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub size: u64,
    /// turboOCI data source, local.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target_file: String,
    /// turboOCI data source, remote.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target_digest: String,
    /// turboOCI gzip index.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gzip_index: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The writable layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpperLayer {
    /// Index file path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub index: String,
    /// Data file path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// turboOCI target.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// turboOCI gzip index.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gzip_index: String,
}

impl UpperLayer {
    /// True if the upper is not configured (the reference needs both paths).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty() || self.data.is_empty()
    }
}

impl LowerLayer {
    /// The local file holding this layer, if there is one: `file`, else the first existing of
    /// `dir/overlaybd.commit`, `dir/.commit`, `dir/overlaybd.sealed`.
    pub fn local_path(&self) -> Option<PathBuf> {
        if !self.file.is_empty() {
            return Some(PathBuf::from(&self.file));
        }
        if self.dir.is_empty() {
            return None;
        }
        ["overlaybd.commit", ".commit", "overlaybd.sealed"]
            .iter()
            .map(|n| Path::new(&self.dir).join(n))
            .find(|p| p.exists())
    }
}

impl DeviceConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read(path).map_err(|source| Error::Read { path: path.into(), source })?;
        serde_json::from_slice(&text).map_err(|source| Error::Parse { path: path.into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_snapshotter_example() {
        let c: DeviceConfig = serde_json::from_str(
            r#"{"repoBlobUrl": "https://r/v2/a/blobs", "lowers": [{"digest": "sha256:00", "size": 642560, "dir": "/x/11/block"}],
                "upper": {"index": "/x/13/block/writable_index", "data": "/x/13/block/writable_data"},
                "resultFile": "/x/13/block/init-debug.log", "unknownKey": 1}"#,
        )
        .unwrap();
        assert_eq!(c.lowers[0].size, 642560);
        assert!(!c.upper.is_empty());
        assert_eq!(c.result_file, "/x/13/block/init-debug.log");
        let back: DeviceConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
