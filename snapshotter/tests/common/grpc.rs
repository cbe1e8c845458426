//! A gRPC client of the snapshotter's socket (containerd's Snapshots API).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::tonic;
pub use containerd_snapshots::tonic::Code;
use overlaybd_integration::fixtures::run;

/// How long a call may take before the test fails (generous: only a call that hangs meets it).
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A blocking client; every call fails the test if it has no answer within [`CALL_TIMEOUT`].
pub struct Client {
    rt: tokio::runtime::Runtime,
    c: SnapshotsClient<tonic::transport::Channel>,
}

/// Mounts as (type, source, options).
pub type Mounts = Vec<(String, String, Vec<String>)>;

impl Client {
    /// Connects to `socket`.
    pub fn connect(socket: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let p = socket.to_path_buf();
        let ch = rt
            .block_on(
                tonic::transport::Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_| tokio::net::UnixStream::connect(p.clone()))),
            )
            .unwrap();
        Client { rt, c: SnapshotsClient::new(ch) }
    }

    fn labels(l: &[(&str, &str)]) -> HashMap<String, String> {
        l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn mounts(m: Vec<containerd_snapshots::api::types::Mount>) -> Mounts {
        m.into_iter().map(|m| (m.r#type, m.source, m.options)).collect()
    }

    /// Prepare.
    pub fn prepare(&mut self, key: &str, parent: &str, labels: &[(&str, &str)]) -> Result<Mounts, tonic::Status> {
        let req = api::PrepareSnapshotRequest {
            snapshotter: "overlaybd".into(),
            key: key.into(),
            parent: parent.into(),
            labels: Self::labels(labels),
        };
        block(&self.rt, self.c.prepare(req)).map(|r| Self::mounts(r.into_inner().mounts))
    }

    /// View.
    pub fn view(&mut self, key: &str, parent: &str) -> Result<Mounts, tonic::Status> {
        let req = api::ViewSnapshotRequest {
            snapshotter: "overlaybd".into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        block(&self.rt, self.c.view(req)).map(|r| Self::mounts(r.into_inner().mounts))
    }

    /// Mounts.
    pub fn mounts_of(&mut self, key: &str) -> Result<Mounts, tonic::Status> {
        let req = api::MountsRequest { snapshotter: "overlaybd".into(), key: key.into() };
        block(&self.rt, self.c.mounts(req)).map(|r| Self::mounts(r.into_inner().mounts))
    }

    /// Commit.
    pub fn commit(&mut self, name: &str, key: &str, labels: &[(&str, &str)]) -> Result<(), tonic::Status> {
        let req = api::CommitSnapshotRequest {
            snapshotter: "overlaybd".into(),
            name: name.into(),
            key: key.into(),
            labels: Self::labels(labels),
        };
        block(&self.rt, self.c.commit(req)).map(|_| ())
    }

    /// Remove.
    pub fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        let req = api::RemoveSnapshotRequest { snapshotter: "overlaybd".into(), key: key.into() };
        block(&self.rt, self.c.remove(req)).map(|_| ())
    }

    /// Stat: (kind, parent, labels).
    pub fn stat(&mut self, key: &str) -> Result<(i32, String, HashMap<String, String>), tonic::Status> {
        let req = api::StatSnapshotRequest { snapshotter: "overlaybd".into(), key: key.into() };
        block(&self.rt, self.c.stat(req)).map(|r| {
            let i = r.into_inner().info.unwrap_or_default();
            (i.kind, i.parent, i.labels)
        })
    }

    /// List with filters: the names.
    pub fn list(&mut self, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
        let req = api::ListSnapshotsRequest {
            snapshotter: "overlaybd".into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
        };
        let c = &mut self.c;
        block(&self.rt, async {
            let mut s = c.list(req).await?.into_inner();
            let mut names = Vec::new();
            while let Some(m) = s.message().await? {
                names.extend(m.info.into_iter().map(|i| i.name));
            }
            Ok(names)
        })
    }

    /// Usage: (size, inodes).
    pub fn usage(&mut self, key: &str) -> Result<(i64, i64), tonic::Status> {
        let req = api::UsageRequest { snapshotter: "overlaybd".into(), key: key.into() };
        block(&self.rt, self.c.usage(req)).map(|r| {
            let u = r.into_inner();
            (u.size, u.inodes)
        })
    }
}

/// Runs call `f` on `rt`, failing the test after [`CALL_TIMEOUT`].
fn block<T>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    rt.block_on(async {
        tokio::time::timeout(CALL_TIMEOUT, f)
            .await
            .unwrap_or_else(|_| panic!("no answer from the snapshotter within {} s", CALL_TIMEOUT.as_secs()))
    })
}

/// Mounts `m` at `target` the way a runtime would (overlay or bind).
pub fn mount(m: &Mounts, target: &Path) {
    assert_eq!(m.len(), 1, "{m:?}");
    let (ty, src, opts) = &m[0];
    std::fs::create_dir_all(target).unwrap();
    let mut o = Command::new("mount");
    if ty == "bind" {
        o.arg("--bind").arg(src).arg(target);
        run(&mut o);
        if opts.iter().any(|x| x == "ro") {
            run(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(target));
        }
    } else {
        o.arg("-t").arg(ty).arg("-o").arg(opts.join(",")).arg(src).arg(target);
        run(&mut o);
    }
}

/// Unmounts `target`.
pub fn umount(target: &Path) {
    run(Command::new("umount").arg(target));
}
