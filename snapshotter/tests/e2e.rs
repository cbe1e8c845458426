//! End-to-end tests of `overlaybd-snapshotter` with real parts started here: Debian's
//! containerd, runc and docker-registry, and the snapshotter on the fuse-loop frontend (real
//! FUSE, loop devices and ext4). Run as root.

mod common;

use std::path::Path;
use std::process::Command;

use common::grpc::{self, Client, Code};
use common::*;

const REF: &str = "containerd.io/snapshot.ref";
const IMAGE_REF: &str = "containerd.io/snapshot/image-ref";
const DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
const SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
const WRITABLE: &str = "containerd.io/snapshot/overlaybd.writable";

fn loop_devices_of(run_dir: &Path) -> Vec<String> {
    let out = output(Command::new("losetup").args(["-l", "-n", "-O", "NAME,BACK-FILE"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&run_dir.display().to_string()))
        .map(str::to_string)
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|t| t.starts_with(&d))
        .collect()
}

/// Nothing of the snapshotter is left in the kernel: no loop devices over its FUSE files, no
/// FUSE or ext4 mounts under its root or run dir.
fn assert_nothing_left(s: &Snapshotter) {
    assert!(loop_devices_of(&s.run_dir).is_empty(), "loop devices left: {:?}", loop_devices_of(&s.run_dir));
    assert!(mounts_under(&s.run_dir).is_empty(), "FUSE mounts left: {:?}", mounts_under(&s.run_dir));
    assert!(mounts_under(&s.root).is_empty(), "mounts left under the root: {:?}", mounts_under(&s.root));
}

fn snapshot_dirs(s: &Snapshotter) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(s.root.join("snapshots"))
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A registry holding the reference hello-world image as `test/hello:obd`, and that reference.
fn hello_registry(dir: &Path) -> (Registry, String) {
    let reg = Registry::start();
    let img = reg.push(&reference_hello(&dir.join("hello")).dir, "obd", "test/hello");
    (reg, img)
}

/// Stops the snapshotter (SIGTERM) and checks it left nothing in the kernel.
fn stop_and_check_clean(snap: &mut Snapshotter, c: Client) {
    drop(c);
    snap.stop(nix::sys::signal::Signal::SIGTERM);
    assert_nothing_left(snap);
}

/// Polls `ok` every 200 ms for up to `secs`, then fails with `what()`.
fn wait_for(secs: u64, mut ok: impl FnMut() -> bool, what: impl Fn() -> String) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ok() {
        assert!(std::time::Instant::now() < end, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_plain_oci_image_runs_through_containerd() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let (layout, big_sha) = busybox_image(&t.path().join("bb"));
    let img = reg.push(&layout.dir, "latest", "test/bb");
    let snap = Snapshotter::start(t.path(), "");
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obdplain");
    ctrd.ctr(&["image", "pull", "--plain-http", "--snapshotter", "overlaybd", &img]);
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "overlaybd",
        &img,
        "c1",
        "/bin/sh",
        "-c",
        "cat /etc/keep /etc/new; [ ! -e /etc/gone ] && echo nogone; readlink /etc/link; sha256sum /etc/big; echo w > /tmp/x; cat /tmp/x",
    ]);
    for want in ["keep\n", "second\n", "nogone\n", &big_sha, "\nw\n"] {
        assert!(out.contains(want), "{want:?} not in the container's output: {out}");
    }
    // the image's layers are committed snapshots of ours, parent linked
    let ls = ctrd.ctr(&["snapshots", "--snapshotter", "overlaybd", "ls"]);
    let committed: Vec<(&str, &str)> = ls
        .lines()
        .filter(|l| l.contains("Committed"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[0], f[1])).or(Some((f[0], "")))
        })
        .collect();
    assert_eq!(committed.len(), 2, "{ls}");
    let top = committed.iter().find(|(_, p)| !p.is_empty()).map(|(n, _)| n.to_string()).expect("a layer with a parent");
    // containerd's snapshot commands reach the snapshotter: prepare, mounts, commit, view, label,
    // info, usage and rm, with parents
    let sn = |args: &[&str]| {
        let mut a = vec!["snapshots", "--snapshotter", "overlaybd"];
        a.extend_from_slice(args);
        ctrd.ctr(&a)
    };
    let mounts = sn(&["prepare", "--target", "/tmp/x", "work1", &top]);
    assert!(mounts.contains("overlay") && mounts.contains("lowerdir="), "{mounts}");
    assert_eq!(sn(&["mounts", "/tmp/x", "work1"]).trim(), mounts.trim());
    let target = t.path().join("work1");
    std::fs::create_dir_all(&target).unwrap();
    let cmd = mounts.trim().replace("/tmp/x", &target.display().to_string());
    run(Command::new("sh").arg("-c").arg(&cmd));
    assert_eq!(std::fs::read_to_string(target.join("etc/new")).unwrap(), "second\n");
    std::fs::write(target.join("etc/added"), "third").unwrap();
    grpc::umount(&target);
    sn(&["commit", "done1", "work1"]);
    let view = sn(&["view", "--target", "/tmp/x", "view1", "done1"]);
    assert!(view.contains("lowerdir="), "{view}");
    sn(&["label", "done1", "team=storage"]);
    let info = sn(&["info", "done1"]);
    assert!(info.contains("\"team\": \"storage\"") && info.contains("Committed"), "{info}");
    let usage = sn(&["usage", "done1"]);
    assert!(usage.lines().count() >= 2, "{usage}");
    let e = ctrd.ctr_output(&["snapshots", "--snapshotter", "overlaybd", "rm", "done1"]);
    assert!(!e.status.success(), "a snapshot with a child was removed");
    sn(&["rm", "view1"]);
    sn(&["rm", "done1"]);
    // containerd's collector removes the image's layers from the snapshotter
    ctrd.ctr(&["image", "rm", "--sync", &img]);
    let ls = sn(&["ls"]);
    assert_eq!(ls.lines().count(), 1, "snapshots left after the image was removed: {ls}");
    drop(ctrd);
    drop(snap);
}

#[test]
fn containerd_snapshot_semantics_hold() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let snap = Snapshotter::start(t.path(), &format!("[exporterConfig]\nenable = true\nport = {port}\n"));
    let mut c = Client::connect(&snap.socket);
    let m = t.path().join("m");
    // a parentless active snapshot is a writable directory
    let ma = c.prepare("a", "", &[("l1", "v1")]).unwrap();
    assert_eq!(ma[0].0, "bind");
    grpc::mount(&ma, &m);
    std::fs::write(m.join("one"), "1").unwrap();
    std::fs::create_dir(m.join("d")).unwrap();
    std::fs::write(m.join("d/gone"), "x").unwrap();
    grpc::umount(&m);
    assert_eq!(c.prepare("a", "", &[]).unwrap_err().code(), Code::AlreadyExists);
    c.commit("A", "a", &[("l2", "v2")]).unwrap();
    assert_eq!(c.stat("a").unwrap_err().code(), Code::NotFound);
    let (kind, parent, labels) = c.stat("A").unwrap();
    assert_eq!((kind, parent.as_str()), (3, ""), "committed, no parent");
    assert_eq!(labels.get("l2").map(String::as_str), Some("v2"));
    assert!(!labels.contains_key("l1"), "commit replaces the labels");
    // a child: overlay over the parent, deletions and additions
    let mb = c.prepare("b", "A", &[]).unwrap();
    assert_eq!(mb[0].0, "overlay");
    grpc::mount(&mb, &m);
    assert_eq!(std::fs::read_to_string(m.join("one")).unwrap(), "1");
    std::fs::remove_file(m.join("d/gone")).unwrap();
    std::fs::write(m.join("two"), "2").unwrap();
    grpc::umount(&m);
    c.commit("B", "b", &[]).unwrap();
    // a view of two layers is read-only and sees both
    let mv = c.view("v", "B").unwrap();
    grpc::mount(&mv, &m);
    assert_eq!(std::fs::read_to_string(m.join("two")).unwrap(), "2");
    assert!(!m.join("d/gone").exists());
    assert!(std::fs::write(m.join("three"), "3").is_err(), "a view is writable");
    grpc::umount(&m);
    assert_eq!(c.mounts_of("v").unwrap(), mv);
    assert_eq!(c.mounts_of("B").unwrap_err().code(), Code::FailedPrecondition);
    // parents must be committed and exist
    assert_eq!(c.prepare("x", "v", &[]).unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(c.prepare("x", "nope", &[]).unwrap_err().code(), Code::NotFound);
    // filters
    let mut committed = c.list(&["kind==committed"]).unwrap();
    committed.sort();
    assert_eq!(committed, vec!["A", "B"]);
    assert_eq!(c.list(&["parent==A"]).unwrap(), vec!["B"]);
    assert_eq!(c.list(&[r#"labels."l2"==v2,parent=="#]).unwrap(), vec!["A"]);
    assert_eq!(c.list(&["name==v", "name==A"]).unwrap().len(), 2, "filters are OR-ed");
    assert_eq!(c.list(&["name="]).unwrap_err().code(), Code::InvalidArgument);
    // usage of a committed layer is what it holds
    let (size, inodes) = c.usage("A").unwrap();
    assert!(size > 0 && inodes >= 3, "{size} {inodes}");
    // removal: not with children; the word "remove" is in the error (containerd's suite checks it)
    let e = c.remove("A").unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("remove"), "{}", e.message());
    // the Prometheus endpoint counts the calls and their errors
    let metrics = {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        tcp.read_to_string(&mut body).unwrap();
        body
    };
    assert!(metrics.starts_with("HTTP/1.1 200") && metrics.contains("is_alive 1"), "{metrics}");
    assert!(metrics.contains("grpc_latency_seconds_count{function=\"Prepare\"}"), "{metrics}");
    assert!(metrics.contains("grpc_error_count{function=\"Remove\"} 1"), "{metrics}");
    c.remove("v").unwrap();
    c.remove("B").unwrap();
    c.remove("A").unwrap();
    assert!(c.list(&[]).unwrap().is_empty());
    assert!(snapshot_dirs(&snap).is_empty(), "directories left: {:?}", snapshot_dirs(&snap));
}

#[test]
fn the_reference_overlaybd_image_pulled_in_full_greets() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (_reg, img) = hello_registry(t.path());
    let snap = Snapshotter::start(t.path(), "");
    let ctrd = Containerd::start(t.path(), &snap.socket, "obdfull");
    ctrd.ctr(&["image", "pull", "--plain-http", "--snapshotter", "overlaybd", &img]);
    let out = ctrd.ctr(&["run", "--rm", "--snapshotter", "overlaybd", &img, "h1"]);
    assert!(out.contains("Hello from Docker!"), "{out}");
    // the layer was unpacked to a local overlaybd file and served from a device of ours
    let configs: Vec<_> = snapshot_dirs(&snap)
        .into_iter()
        .map(|d| snap.root.join("snapshots").join(d).join("block/config.v1.json"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(configs.len(), 1);
    let cfg = std::fs::read_to_string(&configs[0]).unwrap();
    assert!(cfg.contains("\"dir\"") && !cfg.contains("digest"), "{cfg}");
    ctrd.ctr(&["image", "rm", &img]);
    drop(ctrd);
    drop(snap);
}

/// The chain ID of a one-layer image is its diff ID, here the layer digest.
fn prepare_remote_hello(c: &mut Client, reg: &Registry) -> String {
    let chain = HELLO_LAYER.to_string();
    let image = format!("{}/test/hello:obd", reg.host);
    let size = HELLO_LAYER_SIZE.to_string();
    let e = c
        .prepare(
            &format!("default/1/extract-1 {chain}"),
            "",
            &[(REF, &chain), (IMAGE_REF, &image), (DIGEST, HELLO_LAYER), (SIZE, &size)],
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    chain
}

#[test]
fn a_remote_layer_is_committed_by_the_snapshotter_and_read_lazily() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    let before = reg.log_text().lines().count();
    let snap = Snapshotter::start(t.path(), &insecure(&reg));
    let mut c = Client::connect(&snap.socket);
    let chain = prepare_remote_hello(&mut c, &reg);
    // containerd's handshake: a Walk for the chain ID, then a Stat
    let found = c.list(&[&format!(r#"labels."{REF}"=={chain},parent=="#)]).unwrap();
    assert_eq!(found, vec![chain.clone()]);
    let (kind, _, labels) = c.stat(&chain).unwrap();
    assert_eq!(kind, 3);
    assert_eq!(labels.get("containerd.io/snapshot/remote").map(String::as_str), Some("remote snapshot"));
    assert_eq!(reg.log_text().lines().count(), before, "the layer was fetched at pull time");
    // a second pull of the same layer (another namespace) finds it
    let e = c
        .prepare(
            &format!("ns2/1/extract-2 {chain}"),
            "",
            &[(REF, &chain), (IMAGE_REF, "h/x"), (DIGEST, HELLO_LAYER), (SIZE, "642560")],
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // a container on it: the device is attached and read by ranges
    let m = c.prepare("ctr1", &chain, &[]).unwrap();
    assert_eq!(m[0].0, "overlay");
    let target = t.path().join("rootfs");
    grpc::mount(&m, &target);
    let hello = std::fs::read(target.join("hello")).unwrap();
    assert_eq!(sha256(&hello), HELLO_SHA);
    grpc::umount(&target);
    let log = reg.log_text();
    let gets: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("http.request.method=GET") && l.contains(&format!("/v2/test/hello/blobs/{HELLO_LAYER}")))
        .collect();
    assert!(!gets.is_empty(), "the registry never served the blob: {log}");
    assert!(gets.iter().all(|l| l.contains("http.response.status=206")), "not only ranges were read: {gets:#?}");
    c.remove("ctr1").unwrap();
    c.remove(&chain).unwrap();
    drop(c);
    let mut snap = snap;
    snap.stop(nix::sys::signal::Signal::SIGTERM);
    assert_nothing_left(&snap);
}

#[test]
fn writes_survive_a_restart_and_a_committed_writable_layer_is_a_lower() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    let mut snap = Snapshotter::start(t.path(), &insecure(&reg));
    let mut c = Client::connect(&snap.socket);
    let chain = prepare_remote_hello(&mut c, &reg);
    // a writable overlaybd device for the container (rwMode dir)
    let m = c.prepare("w", &chain, &[(WRITABLE, "dir")]).unwrap();
    assert_eq!(m[0].0, "bind");
    let target = t.path().join("rootfs");
    grpc::mount(&m, &target);
    assert_eq!(sha256(&std::fs::read(target.join("hello")).unwrap()), HELLO_SHA);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(target.join("written"), &data).unwrap();
    run(&mut Command::new("sync"));
    grpc::umount(&target);
    // restart: the device goes with the process, and Mounts brings it back
    stop_and_check_clean(&mut snap, c);
    snap.restart();
    let mut c = Client::connect(&snap.socket);
    let m2 = c.mounts_of("w").unwrap();
    assert_eq!(m2, m);
    grpc::mount(&m2, &target);
    assert!(std::fs::read(target.join("written")).unwrap() == data, "the container's write did not survive");
    std::fs::write(target.join("second"), "after restart").unwrap();
    grpc::umount(&target);
    // commit: the layer is sealed and becomes a lower of a new container
    c.commit("W", "w", &[]).unwrap();
    let (_, _, labels) = c.stat("W").unwrap();
    let sealed = labels.get("containerd.io/snapshot/overlaybd.localcommitpath").expect("localcommitpath").clone();
    assert!(Path::new(&sealed).exists(), "{sealed}");
    let m3 = c.prepare("r2", "W", &[]).unwrap();
    grpc::mount(&m3, &target);
    assert!(std::fs::read(target.join("written")).unwrap() == data);
    assert_eq!(std::fs::read_to_string(target.join("second")).unwrap(), "after restart");
    assert_eq!(sha256(&std::fs::read(target.join("hello")).unwrap()), HELLO_SHA);
    grpc::umount(&target);
    c.remove("r2").unwrap();
    c.remove("W").unwrap();
    c.remove(&chain).unwrap();
    assert!(snapshot_dirs(&snap).is_empty(), "{:?}", snapshot_dirs(&snap));
    stop_and_check_clean(&mut snap, c);
}

#[test]
fn bad_labels_and_missing_blobs_give_clear_errors_and_leave_nothing() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    let mut snap = Snapshotter::start(t.path(), &insecure(&reg));
    let mut c = Client::connect(&snap.socket);
    let image = format!("{}/test/hello:obd", reg.host);
    let missing = format!("sha256:{}", "ab".repeat(32));
    for (labels, what) in [
        (vec![(DIGEST, "sha256:nothex"), (SIZE, "642560")], "digest"),
        (vec![(DIGEST, HELLO_LAYER), (SIZE, "big")], "size"),
    ] {
        let mut l = vec![(REF, "sha256:c1"), (IMAGE_REF, image.as_str())];
        l.extend(labels);
        let e = c.prepare("extract-x sha256:c1", "", &l).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {}", e.message());
        assert!(e.message().contains(what), "{what}: {}", e.message());
    }
    let e = c
        .prepare(
            "extract-y sha256:c2",
            "",
            &[(REF, "sha256:c2"), (IMAGE_REF, "no-host"), (DIGEST, HELLO_LAYER), (SIZE, "1")],
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    // a layer whose blob the registry does not have: the pull is lazy, the container start fails
    let size = "642560";
    let e = c
        .prepare(
            "extract-z sha256:c3",
            "",
            &[(REF, "sha256:c3"), (IMAGE_REF, &image), (DIGEST, &missing), (SIZE, size)],
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let start = std::time::Instant::now();
    let e = c.prepare("ctr-missing", "sha256:c3", &[]).unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(60), "took {:?}", start.elapsed());
    assert!(e.message().contains(&missing[7..20]) || e.message().contains("404"), "{}", e.message());
    // still usable: the good image runs
    let chain = prepare_remote_hello(&mut c, &reg);
    let m = c.prepare("ok", &chain, &[]).unwrap();
    let target = t.path().join("rootfs");
    grpc::mount(&m, &target);
    assert_eq!(sha256(&std::fs::read(target.join("hello")).unwrap()), HELLO_SHA);
    grpc::umount(&target);
    c.remove("ok").unwrap();
    c.remove(&chain).unwrap();
    c.remove("sha256:c3").unwrap();
    assert!(c.list(&[]).unwrap().is_empty());
    assert!(snapshot_dirs(&snap).is_empty(), "{:?}", snapshot_dirs(&snap));
    stop_and_check_clean(&mut snap, c);
    // a config with an unknown key: the daemon refuses to start and names it
    std::fs::write(&snap.config, "rwmode = \"dir\"\n").unwrap();
    let out = output(
        Command::new(env!("CARGO_BIN_EXE_overlaybd-snapshotter"))
            .arg("--config")
            .arg(&snap.config)
            .arg("--root")
            .arg(&snap.root),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rwmode"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn sigkill_during_writes_ends_them_with_an_error_and_a_restart_recovers_without_leaks() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    let mut snap = Snapshotter::start(t.path(), &insecure(&reg));
    let mut c = Client::connect(&snap.socket);
    let chain = prepare_remote_hello(&mut c, &reg);
    let m = c.prepare("w", &chain, &[(WRITABLE, "dir")]).unwrap();
    let target = t.path().join("rootfs");
    grpc::mount(&m, &target);
    // a writer that fsyncs each 1 MiB file and notes it once it is durable
    let done = t.path().join("done.txt");
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while true; do dd if=/dev/zero of={0}/f$i bs=64k count=16 conv=fsync 2>/dev/null || exit 3; echo $i >> {1}; i=$((i+1)); done",
            target.display(),
            done.display()
        ))
        .spawn()
        .unwrap();
    wait_for(
        30,
        || std::fs::read_to_string(&done).map_or(0, |s| s.lines().count()) >= 3,
        || "the writer made no progress".into(),
    );
    drop(c);
    snap.stop(nix::sys::signal::Signal::SIGKILL);
    // the writer ends with an error in bounded time: no hang on the dead device
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(st) = writer.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > end {
            let _ = writer.kill();
            panic!("the writer hangs on the device of a killed snapshotter");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!status.success(), "{status}");
    let durable: Vec<String> = std::fs::read_to_string(&done).unwrap().lines().map(str::to_string).collect();
    run(Command::new("umount").arg("-l").arg(&target));
    // the restart removes the dead device's remains and attaches it anew with the durable data
    snap.restart();
    wait_for(
        30,
        || !mounts_under(&snap.root).is_empty(),
        || format!("the device was not attached again at start: {}", snap.log_text()),
    );
    let mut c = Client::connect(&snap.socket);
    let m2 = c.mounts_of("w").unwrap();
    grpc::mount(&m2, &target);
    for i in &durable {
        let f = target.join(format!("f{i}"));
        assert_eq!(std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0), 1 << 20, "fsync'd file {} lost", f.display());
    }
    assert_eq!(sha256(&std::fs::read(target.join("hello")).unwrap()), HELLO_SHA);
    grpc::umount(&target);
    c.remove("w").unwrap();
    c.remove(&chain).unwrap();
    assert!(snapshot_dirs(&snap).is_empty(), "{:?}", snapshot_dirs(&snap));
    stop_and_check_clean(&mut snap, c);
}

/// CRI names an image by its tag and by its ID: removing both (as the kubelet's RemoveImage
/// does) frees its snapshots.
fn remove_all_images(ctrd: &Containerd) {
    let ls = ctrd.ctr(&["image", "ls", "-q"]);
    let names: Vec<&str> = ls.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut args = vec!["image", "rm", "--sync"];
    args.extend(names);
    ctrd.ctr(&args);
}

#[test]
fn a_cri_pull_is_lazy_and_the_image_greets() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, img) = hello_registry(t.path());
    let snap = Snapshotter::start(t.path(), &insecure(&reg));
    let ctrd = Containerd::start_with_cri(t.path(), &snap.socket, &reg.host);
    let before = reg.log_text();
    cri::pull(&ctrd.socket, &img).unwrap_or_else(|e| panic!("{e}\n{}", snap.log_text()));
    // no layer data was fetched at pull time, and none landed in containerd's content store
    let pulled = reg.log_text()[before.len()..].to_string();
    assert!(!pulled.contains(&format!("blobs/{HELLO_LAYER}\" http.request.useragent=containerd")), "{pulled}");
    let content = ctrd.ctr(&["content", "ls"]);
    let blobs: Vec<&str> = content.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(!blobs.contains(&HELLO_LAYER), "the layer blob is in the content store: {content}");
    assert_eq!(blobs.len(), 3, "the manifest and config only: {content}");
    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(snaps.contains(HELLO_LAYER), "{snaps}");
    // the container starts from the registry, read by ranges
    let out = ctrd.ctr(&["run", "--rm", "--snapshotter", "overlaybd", &img, "lazy1"]);
    assert!(out.contains("Hello from Docker!"), "{out}");
    let log = reg.log_text();
    let gets: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("http.request.method=GET") && l.contains(&format!("/v2/test/hello/blobs/{HELLO_LAYER}")))
        .collect();
    assert!(!gets.is_empty() && gets.iter().all(|l| l.contains("http.response.status=206")), "{gets:#?}");
    remove_all_images(&ctrd);
    assert!(snapshot_dirs(&snap).is_empty(), "{:?}", snapshot_dirs(&snap));
    drop(ctrd);
    drop(snap);
}

#[test]
fn a_full_disk_gives_a_clear_error_and_the_snapshotter_stays_usable() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    // the root on a small file system of its own
    let small = t.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&small));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Unmount(small.clone());
    let mut snap = Snapshotter::start(&small, &insecure(&reg));
    let mut c = Client::connect(&snap.socket);
    let chain = prepare_remote_hello(&mut c, &reg);
    // fill the disk, then a container's writable layer cannot be made
    let filler = small.join("filler");
    let _ = output(Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", filler.display())).args(["bs=64k"]));
    let e = c.prepare("w", &chain, &[(WRITABLE, "dir")]).unwrap_err();
    assert!(e.message().contains("No space left on device"), "{:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    // nothing half-made stays, and with space back everything works
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(c.stat("w").unwrap_err().code(), Code::NotFound);
    let m = c.prepare("w", &chain, &[(WRITABLE, "dir")]).unwrap();
    let target = t.path().join("rootfs");
    grpc::mount(&m, &target);
    assert_eq!(sha256(&std::fs::read(target.join("hello")).unwrap()), HELLO_SHA);
    grpc::umount(&target);
    c.remove("w").unwrap();
    c.remove(&chain).unwrap();
    assert!(snapshot_dirs(&snap).is_empty(), "{:?}", snapshot_dirs(&snap));
    stop_and_check_clean(&mut snap, c);
}

/// A container of an overlaybd busybox image (made with the backstore's tools, pulled lazily
/// through CRI) that reads its image with direct I/O, so every read reaches the device, and
/// logs `ok` or `err` for each read into its rootfs.
struct IoContainer {
    _reg: Registry,
    snap: Snapshotter,
    ctrd: Containerd,
    img: String,
    id: &'static str,
}

impl IoContainer {
    fn start(dir: &Path, id: &'static str, min_ok: usize) -> IoContainer {
        let reg = Registry::start();
        let (layout, _) = busybox_overlaybd_image(&dir.join("bbobd"), "obd");
        let img = reg.push(&layout.dir, "obd", "test/bbobd");
        let snap = Snapshotter::start(dir, &insecure(&reg));
        let ctrd = Containerd::start_with_cri(dir, &snap.socket, &reg.host);
        cri::pull(&ctrd.socket, &img).unwrap_or_else(|e| panic!("{e}\n{}", snap.log_text()));
        let script = "i=0; while true; do if dd if=/etc/big of=/dev/null bs=4k count=1 skip=$((i % 700)) iflag=direct \
                      2>/dev/null; then echo ok >> /tmp/log; else echo err >> /tmp/log; fi; i=$((i+1)); sleep 0.02; done";
        ctrd.ctr(&["run", "-d", "--snapshotter", "overlaybd", &img, id, "sh", "-c", script]);
        let c = IoContainer { _reg: reg, snap, ctrd, img, id };
        wait_for(30, || c.count("ok") >= min_ok, || format!("the container made no progress: {}", c.snap.log_text()));
        c
    }

    /// How many reads logged `what`.
    fn count(&self, what: &str) -> usize {
        let o = self.ctrd.ctr_output(&["task", "exec", "--exec-id", "l", self.id, "cat", "/tmp/log"]);
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| *l == what).count()
    }

    /// The container's reads fail, promptly, instead of hanging.
    fn wait_for_failing_reads(&self) {
        wait_for(60, || self.count("err") >= 3, || "reads on the gone device neither fail nor go on".into());
    }

    /// Restarts the snapshotter, removes the container and every image, and checks that no
    /// directory, loop device or mount of them stays.
    fn restart_and_remove_all(&mut self) {
        self.snap.restart();
        // containerd's gRPC channel redials with a backoff: wait until it reaches the new process
        let ctrd = &self.ctrd;
        wait_for(
            60,
            || ctrd.ctr_output(&["snapshots", "--snapshotter", "overlaybd", "usage"]).status.success(),
            || "containerd does not reach the restarted snapshotter".into(),
        );
        ctrd.ctr(&["task", "kill", "-s", "KILL", self.id]);
        wait_for(30, || ctrd.ctr_output(&["task", "rm", self.id]).status.success(), || "the task does not go".into());
        ctrd.ctr(&["container", "rm", self.id]);
        remove_all_images(ctrd);
        let snap = &self.snap;
        wait_for(
            30,
            || {
                snapshot_dirs(snap).is_empty()
                    && loop_devices_of(&snap.run_dir).is_empty()
                    && mounts_under(&snap.root).is_empty()
            },
            || {
                format!(
                    "left after removal: dirs {:?}, loops {:?}, mounts {:?}\n{}",
                    snapshot_dirs(snap),
                    loop_devices_of(&snap.run_dir),
                    mounts_under(&snap.root),
                    snap.log_text()
                        .lines()
                        .filter(|l| l.contains("Remove") || l.contains("WARN"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            },
        );
    }

    /// Stops containerd and the snapshotter and checks the kernel holds nothing of them.
    fn finish(self) {
        let IoContainer { _reg, mut snap, ctrd, .. } = self;
        drop(ctrd);
        snap.stop(nix::sys::signal::Signal::SIGTERM);
        assert_nothing_left(&snap);
    }
}

#[test]
fn sigkill_under_a_running_container_ends_its_io_with_errors_and_leaves_nothing_after_removal() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let mut c = IoContainer::start(t.path(), "io1", 10);
    c.snap.stop(nix::sys::signal::Signal::SIGKILL);
    c.wait_for_failing_reads();
    c.ctrd.ctr(&["task", "ls"]);
    c.restart_and_remove_all();
    // and the snapshotter still serves: the image pulls and runs again
    cri::pull(&c.ctrd.socket, &c.img).unwrap();
    let out = c.ctrd.ctr(&["run", "--rm", "--snapshotter", "overlaybd", &c.img, "io2", "cat", "/etc/keep"]);
    assert!(out.contains("keep"), "{out}");
    remove_all_images(&c.ctrd);
    c.finish();
}

#[test]
fn dev_mode_hands_the_device_to_the_runtime_and_auto_remove_dev_detaches_unused_images() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    let mut snap = Snapshotter::start(t.path(), &format!("autoRemoveDev = true\n{}", insecure(&reg)));
    let mut c = Client::connect(&snap.socket);
    let chain = prepare_remote_hello(&mut c, &reg);
    // dev: a raw writable device, mounted by whoever runs the container
    let m = c.prepare("d", &chain, &[(WRITABLE, "dev")]).unwrap();
    let (ty, dev, opts) = &m[0];
    assert_eq!((ty.as_str(), opts.clone()), ("ext4", vec!["rw".to_string(), "discard".to_string()]), "{m:?}");
    assert!(Path::new(dev).exists(), "{dev}");
    let target = t.path().join("rootfs");
    std::fs::create_dir_all(&target).unwrap();
    run(Command::new("mount").args(["-t", "ext4"]).arg(dev).arg(&target));
    assert_eq!(sha256(&std::fs::read(target.join("hello")).unwrap()), HELLO_SHA);
    std::fs::write(target.join("mine"), "on the device").unwrap();
    grpc::umount(&target);
    assert_eq!(c.mounts_of("d").unwrap(), m);
    c.commit("D", "d", &[]).unwrap();
    let m2 = c.prepare("r", "D", &[]).unwrap();
    grpc::mount(&m2, &target);
    assert_eq!(std::fs::read_to_string(target.join("mine")).unwrap(), "on the device");
    grpc::umount(&target);
    // autoRemoveDev: the image device goes with its last container
    let devices_before = loop_devices_of(&snap.run_dir).len();
    assert!(devices_before >= 1);
    c.remove("r").unwrap();
    assert_eq!(loop_devices_of(&snap.run_dir).len(), devices_before - 1, "{:?}", loop_devices_of(&snap.run_dir));
    let a = c.prepare("a1", &chain, &[]).unwrap();
    let b = c.prepare("a2", &chain, &[]).unwrap();
    assert_eq!(a[0].2.last(), b[0].2.last(), "two containers share the image's device");
    c.remove("a1").unwrap();
    assert!(!mounts_under(&snap.root).is_empty(), "detached while a2 still uses it");
    c.remove("a2").unwrap();
    assert!(mounts_under(&snap.root).is_empty(), "{:?}", mounts_under(&snap.root));
    c.remove("D").unwrap();
    c.remove(&chain).unwrap();
    stop_and_check_clean(&mut snap, c);
}

#[test]
fn sigterm_with_a_running_container_stops_in_bounded_time_and_its_io_fails_cleanly() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let mut c = IoContainer::start(t.path(), "t1", 5);
    // a graceful stop (an upgrade, systemctl restart) must not hang on the busy device
    let started = std::time::Instant::now();
    let status = c.snap.stop(nix::sys::signal::Signal::SIGTERM).expect("it was running");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(status.success(), "{status}: {}", c.snap.log_text());
    c.wait_for_failing_reads();
    c.restart_and_remove_all();
    c.finish();
}
