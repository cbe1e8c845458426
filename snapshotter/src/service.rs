//! containerd's Snapshots gRPC service over [`Snapshots`]: each call runs on the blocking pool
//! (device work, registry reads and the store all block), logged and timed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{tonic, Info, Kind as ApiKind, Snapshotter, Usage};

use crate::error::Error;
use crate::snapshots::{SnapshotInfo, Snapshots};
use crate::store::Kind;

/// The service.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Snapshots>,
}

impl Service {
    /// Serves `s`.
    pub fn new(s: Arc<Snapshots>) -> Service {
        Service { inner: s }
    }

    async fn run<T: Send + 'static>(
        &self,
        call: &'static str,
        what: String,
        f: impl FnOnce(&Snapshots) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let s = self.inner.clone();
        let start = Instant::now();
        let r = tokio::task::spawn_blocking(move || f(&s))
            .await
            .unwrap_or_else(|e| Err(Error::Device(format!("{call} of {what} panicked: {e}"))));
        let took = start.elapsed();
        let ms = took.as_secs_f64() * 1000.0;
        crate::metrics::observe(call, took, r.is_err());
        match &r {
            Ok(_) => tracing::debug!(call, key = %what, ms, "ok"),
            // the remote-layer handshake and existence checks: answers, not failures
            Err(e @ (Error::AlreadyExists(_) | Error::NotFound(_))) => {
                tracing::debug!(call, key = %what, ms, error = %e, "answered")
            }
            Err(e) => tracing::warn!(call, key = %what, ms, error = %e, "failed"),
        }
        r
    }
}

fn to_info(i: SnapshotInfo) -> Info {
    let (created_at, updated_at) = (i.record.created(), i.record.updated());
    Info {
        kind: match i.record.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: i.name,
        parent: i.record.parent,
        labels: i.record.labels.into_iter().collect(),
        created_at,
        updated_at,
    }
}

fn sorted(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

#[tonic::async_trait]
impl Snapshotter for Service {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info, Error> {
        let k = key.clone();
        self.run("Stat", key, move |s| s.stat(&k)).await.map(to_info)
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Error> {
        let name = info.name.clone();
        let labels = sorted(info.labels);
        let paths = fieldpaths.unwrap_or_default();
        self.run("Update", name.clone(), move |s| s.update(&name, labels, &paths)).await.map(to_info)
    }

    async fn usage(&self, key: String) -> Result<Usage, Error> {
        let k = key.clone();
        let u = self.run("Usage", key, move |s| s.usage(&k)).await?;
        Ok(Usage { inodes: u.inodes, size: u.size })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Error> {
        let k = key.clone();
        self.run("Mounts", key, move |s| s.mounts(&k)).await
    }

    async fn prepare(&self, key: String, parent: String, labels: HashMap<String, String>) -> Result<Vec<Mount>, Error> {
        let k = key.clone();
        self.run("Prepare", key, move |s| s.create(Kind::Active, &k, &parent, sorted(labels))).await
    }

    async fn view(&self, key: String, parent: String, labels: HashMap<String, String>) -> Result<Vec<Mount>, Error> {
        let k = key.clone();
        self.run("View", key, move |s| s.create(Kind::View, &k, &parent, sorted(labels))).await
    }

    async fn commit(&self, name: String, key: String, labels: HashMap<String, String>) -> Result<(), Error> {
        self.run("Commit", key.clone(), move |s| s.commit(&name, &key, sorted(labels))).await
    }

    async fn remove(&self, key: String) -> Result<(), Error> {
        let k = key.clone();
        self.run("Remove", key, move |s| s.remove(&k)).await
    }

    async fn clear(&self) -> Result<(), Error> {
        self.run("Cleanup", String::new(), |s| s.cleanup()).await
    }

    type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info, Error>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream, Error> {
        let shown = filters.join(" | ");
        let all = self.run("Walk", shown, move |s| s.list(&filters)).await?;
        let v: Vec<Result<Info, Error>> = all.into_iter().map(|i| Ok(to_info(i))).collect();
        Ok(futures::stream::iter(v))
    }
}
