//! `ctr-obd record-trace` (`snapshotter.md` §10.4): a new image made of an overlaybd image and
//! an acceleration layer on top, holding a trace recorded while a temporary container ran (or a
//! priority list).
//!
//! Recording: under a lease, optionally in a network namespace with a CNI bridge, the image is
//! unpacked if needed, a rootfs snapshot is prepared with the `record-trace` labels (the
//! snapshotter writes `recordTracePath` into the image device's config before it attaches it),
//! and a container runs on it through containerd's Containers and Tasks services (runtime spec
//! built here, [`crate::runspec`]). After `--time` seconds (or SIGINT/SIGTERM, forwarded to
//! the task) the task gets SIGTERM, SIGKILL after as long again; the container and its snapshot
//! are deleted, `<trace>.lock` is removed so that the device writes the trace, and
//! `<trace>.ok` is awaited. The trace then becomes the layer ([`crate::accel`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest, KillRequest,
    StartRequest, WaitRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Mount;
use convertor::image::ANNOTATION_BLOB_DIGEST;
use serde_json::Value;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::accel::{self, ANNOTATION_ACCELERATION_LAYER};
use crate::bounded::Cut;
use crate::cli::RecordTraceArgs;
use crate::cni::{self, Network};
use crate::containerd::{call, rfc3339, Containerd, QUICK};
use crate::content;
use crate::error::{Error, Result};
use crate::images;
use crate::manifest::{self, Descriptor, Kind, Manifest};
use crate::obdconv::{read_document, ANNOTATION_FS_TYPE};
use crate::runspec::{self, ImageProcess};
use crate::unpack::{Layer, Unpacker, LABEL_IMAGE_REF};

/// The label asking the snapshotter to record a trace.
pub const LABEL_RECORD_TRACE: &str = "containerd.io/snapshot/overlaybd/record-trace";
/// The label naming the trace file.
pub const LABEL_RECORD_TRACE_PATH: &str = "containerd.io/snapshot/overlaybd/record-trace-path";
/// How long the lease of the new image's blobs outlives a crashed `ctr-obd`.
pub const WRITE_LEASE_EXPIRE: Duration = Duration::from_secs(3600);
/// Bound of a Prepare (the snapshotter attaches the image's device) and of creating or starting
/// a task (the shim starts and mounts the rootfs).
pub const SLOW: Duration = Duration::from_secs(300);
/// How long a task killed with SIGKILL on cleanup may take to be reaped.
pub const REAP: Duration = Duration::from_secs(30);

/// `record-trace-<YYYYmmddHHMMSS>-<4 hex>`, the reference's unique names (UTC).
pub fn unique_name() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let stamp: String = rfc3339(secs).chars().filter(char::is_ascii_digit).collect();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("record-trace-{stamp}-{}", &rand[..4])
}

/// Checks the flags.
pub fn check(args: &RecordTraceArgs) -> Result<()> {
    if args.time == 0 {
        return Err(Error::Usage("--time 0: the recording time must be at least 1 second".into()));
    }
    if args.priority_list.is_some() && !args.command.is_empty() {
        return Err(Error::Usage(
            "--priority_list and a COMMAND cannot be given together: the priority list replaces the recording".into(),
        ));
    }
    if args.old.is_empty() || args.new.is_empty() {
        return Err(Error::Usage("record-trace needs the image and the name of the new image".into()));
    }
    if args.old == args.new {
        return Err(Error::Usage(format!("record-trace {0} {0}: the new image must have another name", args.old)));
    }
    if args.snapshotter.is_empty() || args.runtime.is_empty() {
        return Err(Error::Usage("--snapshotter and --runtime must not be empty".into()));
    }
    if args.priority_list.is_none() && !args.disable_network_isolation {
        cni::check_plugins(&args.cni_plugin_dir)?;
    }
    Ok(())
}

/// What the command reads of the old image.
struct Old {
    manifest_desc: Descriptor,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    config_bytes: Vec<u8>,
    config: Value,
    diff_ids: Vec<String>,
    chain_ids: Vec<String>,
    fs_type: String,
}

/// What the recording made and must be undone.
#[derive(Default)]
struct State {
    network: Option<Network>,
    snapshot: Option<String>,
    container: Option<String>,
    task: Option<String>,
    current: Option<String>,
}

/// SIGINT and SIGTERM, and the whole command's deadline.
struct Stops {
    int: Signal,
    term: Signal,
    deadline: Option<(Instant, Duration)>,
}

impl Stops {
    /// Resolves when the command must stop. While `forwarding` is set a signal goes to `tx`
    /// (for the task) instead.
    async fn wait(&mut self, forwarding: &Cell<bool>, tx: &UnboundedSender<i32>) -> Cut {
        let deadline = self.deadline;
        let sleep = async move {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            let sig = tokio::select! {
                _ = &mut sleep => return Cut::Timeout(deadline.map(|d| d.1).unwrap_or_default()),
                _ = self.int.recv() => libc_sig::SIGINT,
                _ = self.term.recv() => libc_sig::SIGTERM,
            };
            if forwarding.get() {
                let _ = tx.send(sig);
            } else {
                return Cut::Interrupted;
            }
        }
    }
}

/// Signal numbers (Linux).
mod libc_sig {
    pub const SIGINT: i32 = 2;
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
}

/// Runs `record-trace`; the lines to print.
pub async fn run(
    address: &Path,
    namespace: &str,
    limit: Option<Duration>,
    args: &RecordTraceArgs,
) -> Result<Vec<String>> {
    check(args)?;
    let time = Duration::from_secs(args.time);
    let io = |what: &str, e| Error::io(what, e);
    let mut stops = Stops {
        int: signal(SignalKind::interrupt()).map_err(|e| io("SIGINT handler", e))?,
        term: signal(SignalKind::terminate()).map_err(|e| io("SIGTERM handler", e))?,
        deadline: limit.map(|d| (Instant::now() + d, d)),
    };
    let forwarding = Cell::new(false);
    let (tx, mut rx) = unbounded_channel();
    let mut cd = Containerd::connect(address, namespace).await?;
    let shown = format!("record-trace {} {}", args.old, args.new);
    let cut = |c: Cut, what: &str| match c {
        Cut::Timeout(after) => Error::Timeout { what: format!("{shown} while {what}"), after },
        Cut::Interrupted => Error::Interrupted(format!("{shown} while {what}")),
    };

    // the images
    let old = tokio::select! {
        r = inspect(&cd, args) => r?,
        c = stops.wait(&forwarding, &tx) => return Err(cut(c, "reading the image")),
    };

    // the trace file
    let dir = &args.working_dir;
    std::fs::create_dir_all(dir).map_err(|e| io(&format!("--working-dir {}", dir.display()), e))?;
    let trace = dir.join(unique_name());
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&trace)
        .map_err(|e| io(&trace.display().to_string(), e))?;
    let mut lines = Vec::new();
    let recorded = match &args.priority_list {
        Some(list) => {
            println!("Set priority list as acceleration layer");
            std::fs::copy(list, &trace).map(|_| ()).map_err(|e| io(&format!("--priority_list {}", list.display()), e))
        }
        None => {
            let id = unique_name();
            let lease = cd.create_lease(&id, time * 3).await;
            let outcome = match lease {
                Err(e) => Err(e),
                Ok(_) => {
                    let mut st = State::default();
                    let mut u = Unpacker {
                        cd: &cd,
                        snapshotter: &args.snapshotter,
                        registry: None,
                        labels: HashMap::from([(LABEL_IMAGE_REF.to_string(), args.old.clone())]),
                        blob_labels: HashMap::new(),
                        active: None,
                    };
                    let r = tokio::select! {
                        r = record(&mut u, &mut st, &old, args, &id, &trace, &mut rx, &forwarding) => r,
                        c = stops.wait(&forwarding, &tx) => {
                            let what = st.current.clone().unwrap_or_else(|| "recording".into());
                            Err(cut(c, &what))
                        }
                    };
                    let active = u.active.take();
                    let made = st.snapshot.is_some();
                    let mut left = release(&cd, &args.snapshotter, &mut st).await;
                    if made && r.is_err() {
                        // the removed snapshot leaves the snapshotter (and its device) now
                        if let Err(e) = cd.collect_garbage().await {
                            tracing::warn!("{e}");
                        }
                    }
                    if let Some(key) = active {
                        if let Err(e) = tokio::time::timeout(QUICK, u.remove(&key))
                            .await
                            .unwrap_or_else(|_| Err(Error::Timeout { what: format!("removing {key}"), after: QUICK }))
                        {
                            left.push(format!("the active snapshot {key:?}: {e}"));
                        }
                    }
                    for l in &left {
                        tracing::warn!("left behind: {l}");
                    }
                    r
                }
            };
            if let Err(e) = cd.delete_lease().await {
                tracing::warn!("{e}");
            }
            outcome
        }
    };
    let built = match recorded {
        Err(e) => Err(e),
        Ok(()) => match cd.create_lease("ctr-obd-record-trace", WRITE_LEASE_EXPIRE).await {
            Err(e) => Err(e),
            Ok(_) => {
                let r = tokio::select! {
                    r = build(&cd, args, &old, &trace) => r,
                    c = stops.wait(&forwarding, &tx) => Err(cut(c, &format!("writing image {}", args.new))),
                };
                if let Err(e) = cd.delete_lease().await {
                    tracing::warn!("{e}");
                }
                r
            }
        },
    };
    remove_trace_files(&trace).await;
    let digest = built?;
    lines.push(format!("New image {} is created", args.new));
    lines.push(format!("new image digest: {digest}"));
    Ok(lines)
}

/// How long a recording cut short may take to write its trace once its lock is removed.
pub const DUMP_GRACE: Duration = Duration::from_secs(5);

/// Removes the trace file and its siblings. A recording still going on (its `.lock` is there:
/// the command failed or was cut short before collecting) is stopped first and given a moment
/// to write, so that it does not write them again after they were removed.
async fn remove_trace_files(trace: &Path) {
    let (lock, ok) = (suffixed(trace, ".lock"), suffixed(trace, ".ok"));
    if std::fs::remove_file(&lock).is_ok() {
        let until = Instant::now() + DUMP_GRACE;
        while !ok.exists() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for suffix in ["", ".ok", ".log", ".tmp"] {
        let _ = std::fs::remove_file(suffixed(trace, suffix));
    }
}

/// `path` with `suffix` appended to its name.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Checks NEW and reads OLD: its host manifest, config and top layer.
async fn inspect(cd: &Containerd, args: &RecordTraceArgs) -> Result<Old> {
    let (src, ns) = (&args.old, cd.namespace());
    if images::get(cd, &args.new).await?.is_some() {
        return Err(Error::Image(format!(
            "image {} already exists in namespace {ns:?}: remove it (ctr image rm {0}) or choose another name",
            args.new
        )));
    }
    let image = images::get(cd, src).await?.ok_or_else(|| {
        Error::Image(format!("image {src} is not in containerd's namespace {ns:?}: pull it first (ctr-obd rpull)"))
    })?;
    let target = image
        .target
        .as_ref()
        .map(Descriptor::from_containerd)
        .ok_or_else(|| Error::Image(format!("image {src} has no target")))?;
    let top = read_document(cd, src, &target).await?;
    let what = format!("{src}: {}", target.digest);
    let top_doc = manifest::parse(&top, &what)?;
    let (kind, top_type) = manifest::kind(&top_doc, &target.media_type, &what)?;
    let (manifest_bytes, mut manifest_desc) = match kind {
        Kind::Manifest => (top, Descriptor { media_type: top_type, ..target }),
        Kind::Index => {
            let d = manifest::host_manifest(&top_doc, &format!("{src}: the index"))?;
            (read_document(cd, src, &d).await?, d)
        }
    };
    let what = format!("{src}: manifest {}", manifest_desc.digest);
    let doc = manifest::parse(&manifest_bytes, &what)?;
    manifest_desc.media_type = manifest::kind(&doc, &manifest_desc.media_type, &what)?.1;
    let m = Manifest::from_json(&doc, &what)?;
    let top_layer = m.layers.last().ok_or_else(|| Error::Image(format!("{what} has no layers")))?;
    if !top_layer.annotations.contains_key(ANNOTATION_BLOB_DIGEST) {
        return Err(Error::Image(format!(
            "{src} is not an overlaybd image: its top layer {} has no {ANNOTATION_BLOB_DIGEST} annotation (convert it \
             first: ctr-obd obdconv or overlaybd-convertor)",
            top_layer.digest
        )));
    }
    if top_layer.annotations.get(ANNOTATION_ACCELERATION_LAYER).map(String::as_str) == Some("yes") {
        return Err(Error::Image(format!(
            "{src} already has an acceleration layer (its top layer {} is one)",
            top_layer.digest
        )));
    }
    let fs_type = top_layer.annotations.get(ANNOTATION_FS_TYPE).cloned().unwrap_or_default();
    let config_bytes = read_document(cd, src, &m.config).await?;
    let config = manifest::parse(&config_bytes, &format!("{src}: config {}", m.config.digest))?;
    let diff_ids = convertor::image::diff_ids(&config_bytes)
        .map_err(|e| Error::Image(format!("{src}: config {}: {e}", m.config.digest)))?;
    if diff_ids.len() != m.layers.len() {
        return Err(Error::Image(format!(
            "{what} lists {} layers but its config {} diff IDs",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    let chain_ids = convertor::chain::chain_ids(&diff_ids);
    Ok(Old { manifest_desc, manifest_bytes, manifest: m, config_bytes, config, diff_ids, chain_ids, fs_type })
}

/// The recording: network, unpack, snapshot, container, task, stop, delete, collect.
#[allow(clippy::too_many_arguments)]
async fn record(
    u: &mut Unpacker<'_>,
    st: &mut State,
    old: &Old,
    args: &RecordTraceArgs,
    id: &str,
    trace: &Path,
    signals: &mut UnboundedReceiver<i32>,
    forwarding: &Cell<bool>,
) -> Result<()> {
    let cd = u.cd;
    let time = Duration::from_secs(args.time);
    if !args.disable_network_isolation {
        st.current = Some("setting up the network namespace".into());
        st.network.insert(Network::new(id, &args.cni_plugin_dir)).setup().await?;
    }
    for (i, desc) in old.manifest.layers.iter().enumerate() {
        st.current = Some(format!("unpacking layer {i} ({})", desc.digest));
        let layer = Layer {
            index: i,
            desc,
            diff_id: &old.diff_ids[i],
            chain_id: &old.chain_ids[i],
            parent: if i == 0 { "" } else { &old.chain_ids[i - 1] },
        };
        u.unpack(&layer).await?;
    }

    println!("Create container");
    st.current = Some("preparing the container's snapshot".into());
    let labels = HashMap::from([
        (LABEL_RECORD_TRACE.to_string(), "yes".to_string()),
        (LABEL_RECORD_TRACE_PATH.to_string(), trace.display().to_string()),
    ]);
    let parent = old.chain_ids.last().cloned().unwrap_or_default();
    st.snapshot = Some(id.to_string());
    let req = PrepareSnapshotRequest {
        snapshotter: args.snapshotter.clone(),
        key: id.to_string(),
        parent: parent.clone(),
        labels,
    };
    let mounts = call(
        &format!("Snapshots.Prepare {id} (parent {parent})"),
        SLOW,
        cd.client().snapshots().prepare(cd.request(req, SLOW)),
    )
    .await?
    .mounts;
    let lock = suffixed(trace, ".lock");
    let recording_started = lock.exists();
    if !recording_started {
        tracing::warn!(
            "{} did not appear when the image's device was attached: the device may already have been attached for \
             another container (recording starts only when it attaches with the record labels)",
            lock.display()
        );
    }

    st.current = Some("creating the container".into());
    let process = ImageProcess::from_config(&old.config, &args.command, &args.old)?;
    let (uid, gid, extra) = if process.needs_passwd() {
        let (passwd, group) = image_user_files(&mounts, &args.working_dir, id).await?;
        runspec::resolve_user(&process.user, &passwd, &group).map_err(|e| Error::Image(format!("{}: {e}", args.old)))?
    } else {
        runspec::resolve_user(&process.user, "", "")?
    };
    let netns = st.network.as_ref().map(|n| n.path.display().to_string());
    let spec = runspec::spec(cd.namespace(), id, &process, (uid, gid, &extra), netns.as_deref());
    let container = Container {
        id: id.to_string(),
        image: args.old.clone(),
        runtime: Some(Runtime { name: args.runtime.clone(), options: None }),
        spec: Some(prost_types::Any {
            type_url: runspec::SPEC_TYPE_URL.to_string(),
            value: serde_json::to_vec(&spec).map_err(|e| Error::Image(format!("encoding the runtime spec: {e}")))?,
        }),
        snapshotter: args.snapshotter.clone(),
        snapshot_key: id.to_string(),
        ..Default::default()
    };
    st.container = Some(id.to_string());
    let req = CreateContainerRequest { container: Some(container) };
    call(&format!("Containers.Create {id}"), QUICK, cd.client().containers().create(cd.request(req, QUICK))).await?;

    st.current = Some("starting the task".into());
    let log = suffixed(trace, ".log");
    let stdio = format!("file://{}", log.display());
    st.task = Some(id.to_string());
    let req = CreateTaskRequest {
        container_id: id.to_string(),
        rootfs: mounts,
        stdout: stdio.clone(),
        stderr: stdio,
        ..Default::default()
    };
    call(&format!("Tasks.Create {id}"), SLOW, cd.client().tasks().create(cd.request(req, SLOW))).await?;
    let wait_bound = time * 2 + SLOW;
    let wait = async {
        let req = WaitRequest { container_id: id.to_string(), exec_id: String::new() };
        call(&format!("Tasks.Wait {id}"), wait_bound, cd.client().tasks().wait(cd.request(req, wait_bound))).await
    };
    tokio::pin!(wait);
    let req = StartRequest { container_id: id.to_string(), exec_id: String::new() };
    call(&format!("Tasks.Start {id}"), SLOW, cd.client().tasks().start(cd.request(req, SLOW))).await?;
    println!("Task is running ...");

    st.current = Some("recording".into());
    forwarding.set(true);
    let timer = tokio::time::sleep(time);
    tokio::pin!(timer);
    let mut exited = None;
    loop {
        tokio::select! {
            r = &mut wait => {
                println!("Task finished before timeout ...");
                exited = Some(r?);
                break;
            }
            _ = &mut timer => {
                println!("Timeout, stop recording ...");
                break;
            }
            Some(sig) = signals.recv() => {
                println!("Received signal {sig}");
                kill(cd, id, sig, false).await;
                if sig == libc_sig::SIGINT || sig == libc_sig::SIGTERM {
                    break;
                }
            }
        }
    }
    forwarding.set(false);
    let status = match exited {
        Some(s) => s,
        None => {
            st.current = Some("stopping the task".into());
            kill(cd, id, libc_sig::SIGTERM, false).await;
            tokio::select! {
                r = &mut wait => r?,
                _ = tokio::time::sleep(time) => {
                    println!("Reached maxTaskRunningTime, force kill ...");
                    kill(cd, id, libc_sig::SIGKILL, true).await;
                    wait.await?
                }
            }
        }
    };
    println!("Task exited with status {}", status.exit_status);
    if let Ok(out) = std::fs::read(&log) {
        use std::io::Write;
        let _ = std::io::stdout().write_all(&out);
    }

    // the container and its snapshot go, so that the image's device can detach (with the
    // snapshotter's autoRemoveDev): containerd removes a snapshot from the snapshotter when it
    // collects garbage, so a collection is run now
    st.current = Some("deleting the container".into());
    let left = release(cd, &args.snapshotter, st).await;
    if let Some(l) = left.first() {
        return Err(Error::Image(format!("deleting the recording container: {l}")));
    }
    if let Err(e) = cd.collect_garbage().await {
        tracing::warn!("{e}");
    }

    st.current = Some("collecting the trace".into());
    let lock_was_there = match std::fs::remove_file(&lock) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(lock.display(), e)),
    };
    println!("Collecting trace ...");
    let ok = suffixed(trace, ".ok");
    for _ in 0..args.time {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if ok.exists() {
            println!("Found OK file, trace is available now at {}", trace.display());
            return Ok(());
        }
    }
    let why = if recording_started || lock_was_there {
        "the overlaybd device did not finish writing it".to_string()
    } else {
        format!(
            "{} never appeared, so the image's device did not record: it was probably attached already for another \
             container (recording starts only when the device attaches with the record labels: stop the other \
             containers of the image, with autoRemoveDev on), or this overlaybd does not record traces",
            lock.display()
        )
    };
    Err(Error::Image(format!(
        "trace collection timed out: {} did not appear within {} s after the recording ended: {why}",
        ok.display(),
        args.time
    )))
}

/// Sends `signal` to the task (errors logged: it may have exited).
async fn kill(cd: &Containerd, id: &str, signal: i32, all: bool) {
    let req = KillRequest { container_id: id.to_string(), exec_id: String::new(), signal: signal as u32, all };
    if let Err(e) =
        call(&format!("Tasks.Kill {id} {signal}"), QUICK, cd.client().tasks().kill(cd.request(req, QUICK))).await
    {
        if e.code() != Some(Code::NotFound) {
            tracing::warn!("{e}");
        }
    }
}

/// Deletes what the recording made (task, container, snapshot, network); what could not be.
async fn release(cd: &Containerd, snapshotter: &str, st: &mut State) -> Vec<String> {
    let mut left = Vec::new();
    let gone = |r: Result<()>| match r {
        Err(e) if e.code() != Some(Code::NotFound) => Err(e),
        _ => Ok(()),
    };
    if let Some(id) = st.task.take() {
        kill(cd, &id, libc_sig::SIGKILL, true).await;
        let req = WaitRequest { container_id: id.clone(), exec_id: String::new() };
        let _ = call(&format!("Tasks.Wait {id}"), REAP, cd.client().tasks().wait(cd.request(req, REAP))).await;
        let req = DeleteTaskRequest { container_id: id.clone() };
        let r = call(&format!("Tasks.Delete {id}"), SLOW, cd.client().tasks().delete(cd.request(req, SLOW))).await;
        if let Err(e) = gone(r.map(|_| ())) {
            left.push(format!("task {id}: {e}"));
        }
    }
    if let Some(id) = st.container.take() {
        let req = DeleteContainerRequest { id: id.clone() };
        let r =
            call(&format!("Containers.Delete {id}"), QUICK, cd.client().containers().delete(cd.request(req, QUICK)))
                .await;
        if let Err(e) = gone(r.map(|_| ())) {
            left.push(format!("container {id}: {e}"));
        }
    }
    if let Some(key) = st.snapshot.take() {
        let req = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.clone() };
        let r =
            call(&format!("Snapshots.Remove {key}"), SLOW, cd.client().snapshots().remove(cd.request(req, SLOW))).await;
        if let Err(e) = gone(r.map(|_| ())) {
            left.push(format!("snapshot {key}: {e}"));
        }
    }
    if let Some(mut n) = st.network.take() {
        left.extend(n.teardown().await);
    }
    left
}

/// The image's `/etc/passwd` and `/etc/group` (empty when missing), read through a temporary
/// mount of the rootfs `mounts` under `dir`.
async fn image_user_files(mounts: &[Mount], dir: &Path, id: &str) -> Result<(String, String)> {
    let [m] = mounts else {
        return Err(Error::Image(format!(
            "resolving the image's user needs its rootfs, which the snapshotter gave as {} mounts: give a numeric \
             uid:gid image user",
            mounts.len()
        )));
    };
    let target = dir.join(format!("{id}.rootfs"));
    std::fs::create_dir_all(&target).map_err(|e| Error::io(target.display(), e))?;
    let mut cmd = tokio::process::Command::new("mount");
    if m.r#type != "bind" {
        cmd.arg("-t").arg(&m.r#type);
    }
    if !m.options.is_empty() {
        cmd.arg("-o").arg(m.options.join(","));
    }
    let out = cmd.arg(&m.source).arg(&target).output().await.map_err(|e| Error::io("mount", e))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir(&target);
        return Err(Error::Image(format!(
            "mounting the rootfs to read its /etc/passwd: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let read = |p: &str| std::fs::read_to_string(target.join(p)).unwrap_or_default();
    let files = (read("etc/passwd"), read("etc/group"));
    let _ = tokio::process::Command::new("umount").arg(&target).output().await;
    let _ = std::fs::remove_dir(&target);
    Ok(files)
}

/// Writes the layer, config and manifest into the content store and records NEW; the new
/// manifest's digest.
async fn build(cd: &Containerd, args: &RecordTraceArgs, old: &Old, trace: &Path) -> Result<String> {
    let bytes = std::fs::read(trace).map_err(|e| Error::io(trace.display(), e))?;
    let tar = accel::layer_tar(&bytes);
    let layer = accel::layer_descriptor(&tar, &old.fs_type);
    content::write_bytes(cd, accel::MEDIA_TYPE, &tar, &HashMap::new()).await?;
    let now = rfc3339(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    let what = format!("{}: config {}", args.old, old.manifest.config.digest);
    let config = accel::config(&old.config_bytes, &layer, &now, &what)?;
    let mut diff_ids = old.diff_ids.clone();
    diff_ids.push(layer.digest.clone());
    let top_chain = convertor::chain::chain_ids(&diff_ids).pop().unwrap_or_default();
    let config_labels =
        HashMap::from([(format!("containerd.io/gc.ref.snapshot.{}", args.snapshotter), top_chain.clone())]);
    let config_desc = content::write_bytes(cd, &old.manifest.config.media_type, &config, &config_labels).await?;
    let what = format!("{}: manifest {}", args.old, old.manifest_desc.digest);
    let new_manifest =
        accel::manifest(&old.manifest_bytes, &old.manifest_desc.media_type, &config_desc, &layer, &what)?;
    let media_type = manifest::parse(&new_manifest, &what)?
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(&old.manifest_desc.media_type)
        .to_string();
    let mut labels = HashMap::from([("containerd.io/gc.ref.content.config".to_string(), config_desc.digest.clone())]);
    for (i, l) in old.manifest.layers.iter().chain(std::iter::once(&layer)).enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
    }
    // where OLD came from: `ctr-obd push` mounts the lazily pulled layers from there
    if let Some(info) = content::info(cd, &old.manifest_desc.digest).await? {
        labels.extend(info.labels.into_iter().filter(|(k, _)| k.starts_with("containerd.io/distribution.source.")));
    }
    let desc = content::write_bytes(cd, &media_type, &new_manifest, &labels).await?;
    // the layer unpacked as containerd's pull unpacker would (its annotations as labels: the
    // snapshotter stacks it as an acceleration layer), so that NEW runs here right away: the
    // unpack of `ctr run` passes no annotations
    let mut u = Unpacker {
        cd,
        snapshotter: &args.snapshotter,
        registry: None,
        labels: HashMap::from([(LABEL_IMAGE_REF.to_string(), args.new.clone())]),
        blob_labels: HashMap::new(),
        active: None,
    };
    let parent = old.chain_ids.last().cloned().unwrap_or_default();
    let accel = Layer {
        index: old.manifest.layers.len(),
        desc: &layer,
        diff_id: &layer.digest,
        chain_id: &top_chain,
        parent: &parent,
    };
    let unpacked = u.unpack(&accel).await;
    if let Some(key) = u.active.take() {
        if let Err(e) = u.remove(&key).await {
            tracing::warn!("the active snapshot {key:?} was left: {e}");
        }
    }
    unpacked?;
    images::put(cd, &args.new, &desc, HashMap::new()).await?;
    tracing::info!(image = %args.new, manifest = %desc.digest, layer = %layer.digest, "acceleration layer added");
    Ok(desc.digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> RecordTraceArgs {
        let mut v = vec!["ctr-obd", "record-trace"];
        v.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(v).unwrap().command {
            crate::cli::Command::RecordTrace(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn bad_flags_are_refused() {
        let ok = &["--disable-network-isolation", "a", "b"][..];
        assert!(check(&args(ok)).is_ok());
        let e = check(&args(&["--time", "0", "--disable-network-isolation", "a", "b"])).unwrap_err().to_string();
        assert!(e.contains("--time 0"), "{e}");
        let e = check(&args(&["--priority_list", "/x", "a", "b", "sh"])).unwrap_err().to_string();
        assert!(e.contains("--priority_list") && e.contains("COMMAND"), "{e}");
        assert!(check(&args(&["--disable-network-isolation", "a", "a"])).is_err());
        let e = check(&args(&["--cni-plugin-dir", "/nonexistent/cni", "a", "b"])).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cni") && e.contains("--disable-network-isolation"), "{e}");
        // a priority list needs no network
        assert!(check(&args(&["--cni-plugin-dir", "/nonexistent/cni", "--priority_list", "/x", "a", "b"])).is_ok());
    }

    #[test]
    fn names_are_the_references() {
        let n = unique_name();
        let rest = n.strip_prefix("record-trace-").unwrap();
        let (stamp, hex) = rest.split_once('-').unwrap();
        assert_eq!(stamp.len(), 14);
        assert!(stamp.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(hex.len(), 4);
        assert_eq!(suffixed(Path::new("/a/b"), ".ok"), PathBuf::from("/a/b.ok"));
    }
}
