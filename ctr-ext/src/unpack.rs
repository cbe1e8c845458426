//! Unpacking an image's layers through a snapshotter, as containerd's unpacker does: for each
//! layer a `Prepare` labelled with its chain ID; `AlreadyExists` means the snapshotter has the
//! layer (an overlaybd remote layer, committed by the snapshotter itself); otherwise the blob is
//! fetched into the content store, applied with the Diff service and committed.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::tonic::Code;
use containerd_client::types::Mount;

use crate::containerd::{call, unique, Containerd, QUICK};
use crate::content;
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::registry::Registry;

/// The label naming the chain ID a layer's snapshot is committed as.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// The label with the image reference (the snapshotter's blob URL).
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/image-ref";
/// The label asking the overlaybd snapshotter not to commit a remote layer itself.
pub const LABEL_DOWNLOAD: &str = "containerd.io/snapshot/overlaybd/download-remote-blob";
/// The label telling the overlaybd snapshotter that the registry speaks plain HTTP (`--plain-http`):
/// the device then reads the layers over `http://` instead of trying TLS first.
pub const LABEL_PLAIN_HTTP: &str = "containerd.io/snapshot/overlaybd/plain-http";
/// Prefix of the layer annotations containerd passes on as snapshot labels.
pub const INHERITED_PREFIX: &str = "containerd.io/snapshot/";

/// Bound of a Prepare (the snapshotter may reach the registry).
pub const PREPARE: Duration = Duration::from_secs(300);
/// Bound of applying one layer.
pub const APPLY: Duration = Duration::from_secs(1800);

/// How a layer came to be in the snapshotter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpacked {
    /// Its chain ID was already there.
    Existed,
    /// The snapshotter committed it on Prepare (no download).
    Remote,
    /// Its blob was fetched, applied and committed.
    Applied,
}

/// One layer to unpack.
pub struct Layer<'a> {
    /// Position, bottom first.
    pub index: usize,
    /// Its descriptor in the manifest.
    pub desc: &'a Descriptor,
    /// Its diff ID.
    pub diff_id: &'a str,
    /// Its chain ID.
    pub chain_id: &'a str,
    /// The chain ID below it (`""` for the bottom layer).
    pub parent: &'a str,
}

/// Unpacks layers into a snapshotter under the client's lease.
pub struct Unpacker<'a> {
    /// containerd.
    pub cd: &'a Containerd,
    /// The snapshotter's name.
    pub snapshotter: &'a str,
    /// Where the blobs come from when a layer must be applied and its blob is not in the
    /// content store (`None`: the blob must be there).
    pub registry: Option<&'a Registry>,
    /// Labels put on every layer's Prepare besides the layer's own (image ref, download).
    pub labels: HashMap<String, String>,
    /// Labels put on every fetched layer blob (its distribution source).
    pub blob_labels: HashMap<String, String>,
    /// The active snapshot being applied, for the caller to remove if the unpack is cut short.
    pub active: Option<String>,
}

impl Unpacker<'_> {
    /// Whether the snapshotter has `key`.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let mut c = self.cd.client().snapshots();
        let req = StatSnapshotRequest { snapshotter: self.snapshotter.to_string(), key: key.to_string() };
        match call(&format!("Snapshots.Stat {key}"), QUICK, c.stat(self.cd.request(req, QUICK))).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Unpacks `layer` (its parent must be unpacked); errors name the layer.
    pub async fn unpack(&mut self, layer: &Layer<'_>) -> Result<Unpacked> {
        self.unpack_layer(layer).await.map_err(|e| Error::Layer {
            index: layer.index,
            digest: layer.desc.digest.clone(),
            source: Box::new(e),
        })
    }

    async fn unpack_layer(&mut self, layer: &Layer<'_>) -> Result<Unpacked> {
        if self.exists(layer.chain_id).await? {
            self.cd.add_to_lease(&format!("snapshots/{}", self.snapshotter), layer.chain_id).await?;
            return Ok(Unpacked::Existed);
        }
        let mut labels = self.labels.clone();
        labels.extend(
            layer
                .desc
                .annotations
                .iter()
                .filter(|(k, _)| k.starts_with(INHERITED_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        labels.insert(LABEL_SNAPSHOT_REF.into(), layer.chain_id.to_string());
        let mut mounts = None;
        let mut key = String::new();
        for _ in 0..3 {
            key = format!("extract-{} {}", unique(), layer.chain_id);
            let req = PrepareSnapshotRequest {
                snapshotter: self.snapshotter.to_string(),
                key: key.clone(),
                parent: layer.parent.to_string(),
                labels: labels.clone(),
            };
            let mut c = self.cd.client().snapshots();
            let what = format!("Snapshots.Prepare {key:?}");
            match call(&what, PREPARE, c.prepare(self.cd.request(req, PREPARE))).await {
                Ok(r) => {
                    mounts = Some(r.mounts);
                    break;
                }
                Err(e) if e.code() == Some(Code::AlreadyExists) => {
                    if self.exists(layer.chain_id).await? {
                        return Ok(Unpacked::Remote);
                    }
                    // the key was taken: try another
                }
                Err(e) => return Err(e),
            }
        }
        let mounts = mounts.ok_or_else(|| {
            Error::Image(format!(
                "the snapshotter answered \"already exists\" three times but has no snapshot {}",
                layer.chain_id
            ))
        })?;
        self.active = Some(key.clone());
        self.apply(layer, mounts).await?;
        let mut c = self.cd.client().snapshots();
        let req = CommitSnapshotRequest {
            snapshotter: self.snapshotter.to_string(),
            name: layer.chain_id.to_string(),
            key: key.clone(),
            labels,
        };
        match call(&format!("Snapshots.Commit {}", layer.chain_id), PREPARE, c.commit(self.cd.request(req, PREPARE)))
            .await
        {
            Ok(_) => {}
            // committed meanwhile by another pull: ours is not needed
            Err(e) if e.code() == Some(Code::AlreadyExists) => self.remove(&key).await?,
            Err(e) => return Err(e),
        }
        self.active = None;
        Ok(Unpacked::Applied)
    }

    /// Fetches the layer's blob into the content store and applies it onto `mounts`.
    async fn apply(&self, layer: &Layer<'_>, mounts: Vec<Mount>) -> Result<()> {
        if content::info(self.cd, &layer.desc.digest).await?.is_none() {
            tracing::info!(layer = layer.index, blob = %layer.desc.digest, "fetching the layer blob");
            let Some(registry) = self.registry else {
                return Err(Error::Image(format!(
                    "its blob is not in containerd's content store and the layer is not an overlaybd layer the \
                     snapshotter reads remotely: pull the image again (ctr-obd rpull, or ctr image pull with \
                     --snapshotter {})",
                    self.snapshotter
                )));
            };
            let data = registry.blob_stream(layer.desc).await?;
            let wref = format!("ctr-obd-layer-{}", unique());
            content::write(self.cd, &wref, layer.desc, &self.blob_labels, data).await?;
        } else {
            self.cd.add_to_lease("content", &layer.desc.digest).await?;
        }
        let mut c = self.cd.client().diff();
        let mut diff = layer.desc.to_containerd();
        diff.annotations.clear();
        let what = format!("Diff.Apply onto {}", key_of(&mounts));
        let req = ApplyRequest { diff: Some(diff), mounts, payloads: HashMap::new(), sync_fs: false };
        let applied = call(&what, APPLY, c.apply(self.cd.request(req, APPLY))).await?;
        let got = applied.applied.map(|d| d.digest).unwrap_or_default();
        if got != layer.diff_id {
            return Err(Error::Image(format!(
                "the applied content has diff ID {got}, the config says {}",
                layer.diff_id
            )));
        }
        Ok(())
    }

    /// Removes snapshot `key`.
    pub async fn remove(&self, key: &str) -> Result<()> {
        let mut c = self.cd.client().snapshots();
        let req = RemoveSnapshotRequest { snapshotter: self.snapshotter.to_string(), key: key.to_string() };
        call(&format!("Snapshots.Remove {key:?}"), QUICK, c.remove(self.cd.request(req, QUICK))).await.map(|_| ())
    }
}

/// What a mount list is, for messages.
fn key_of(mounts: &[Mount]) -> String {
    mounts.iter().map(|m| format!("{} {}", m.r#type, m.source)).collect::<Vec<_>>().join(", ")
}
