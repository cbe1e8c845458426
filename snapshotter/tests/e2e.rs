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
/// FUSE or ext4 mounts under its root or run dir. Called once the process has exited (or the
/// call that detaches returned); the kernel may finish releasing a loop device a moment after
/// its last user closed it, so this waits (bounded) for the state to be clean.
fn assert_nothing_left(s: &Snapshotter) {
    let left = || (loop_devices_of(&s.run_dir), mounts_under(&s.run_dir), mounts_under(&s.root));
    wait_for(
        60,
        || {
            let (l, f, m) = left();
            l.is_empty() && f.is_empty() && m.is_empty()
        },
        || {
            let (l, f, m) = left();
            format!("left: loop devices {l:?}, FUSE mounts {f:?}, mounts under the root {m:?}\n{}", s.log_text())
        },
    );
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

/// Waits (bounded) until the snapshotter's root holds no snapshot directory.
fn wait_for_no_snapshot_dirs(s: &Snapshotter) {
    wait_for(
        120,
        || snapshot_dirs(s).is_empty(),
        || format!("snapshot directories left: {:?}\n{}", snapshot_dirs(s), s.log_text()),
    );
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
    ctrd.run_logged(
        &[
            "--rm",
            "--snapshotter",
            "overlaybd",
            &img,
            "c1",
            "/bin/sh",
            "-c",
            "cat /etc/keep /etc/new; [ ! -e /etc/gone ] && echo nogone; readlink /etc/link; sha256sum /etc/big; echo w > /tmp/x; cat /tmp/x",
        ],
        &["keep\n", "second\n", "nogone\n", &big_sha, "\nw\n"],
    );
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
        // (the exporter binds its port in a task of its own: wait until it does)
        let mut conn = None;
        wait_until("the metrics exporter to listen", 60, || {
            conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
            conn.is_some()
        });
        let mut tcp = conn.unwrap();
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
    ctrd.run_logged(&["--rm", "--snapshotter", "overlaybd", &img, "h1"], &["Hello from Docker!"]);
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

/// Pulls the hello image's layer from the registry at `host` as containerd does: a Prepare
/// with the target labels, which the snapshotter answers by committing the remote layer
/// itself. The chain ID of a one-layer image is its diff ID, here the layer digest.
fn prepare_remote_hello(c: &mut Client, host: &str) -> String {
    let chain = HELLO_LAYER.to_string();
    let image = format!("{host}/test/hello:obd");
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

/// The blob GETs of the hello layer the proxy forwarded; every one a range request (fails
/// otherwise), and answered by the registry with partial content (its log line comes after
/// its answer: waited for).
fn hello_reads_are_ranges(proxy: &Proxy, reg: &Registry) -> usize {
    let reqs = proxy.requests();
    let ranges = snapshotter_ranges(&reqs, HELLO_LAYER);
    let n = reqs.iter().filter(|r| r.is_blob_get(HELLO_LAYER)).count();
    assert_eq!(ranges.len(), n, "GETs of the layer not made by the snapshotter: {reqs:#?}");
    let gets = reg.wait_for_blob_gets(HELLO_LAYER, n);
    assert!(gets.iter().all(|l| l.contains("http.response.status=206")), "not only ranges were read: {gets:#?}");
    n
}

#[test]
fn a_remote_layer_is_committed_by_the_snapshotter_and_read_lazily() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    // the registry behind a proxy that records each request before forwarding it
    let proxy = Proxy::start(&reg.host);
    let cache = t.path().join("cache");
    // no prefetch at pull: the layer is read only when a container reads it
    let cfg = format!("prefetchOnPull = false\n{}{}", insecure_host(&proxy.host), cache_toml(&cache));
    let mut snap = Snapshotter::start(t.path(), &cfg);
    let mut c = Client::connect(&snap.socket);
    let chain = prepare_remote_hello(&mut c, &proxy.host);
    // containerd's handshake: a Walk for the chain ID, then a Stat
    let found = c.list(&[&format!(r#"labels."{REF}"=={chain},parent=="#)]).unwrap();
    assert_eq!(found, vec![chain.clone()]);
    let (kind, _, labels) = c.stat(&chain).unwrap();
    assert_eq!(kind, 3);
    assert_eq!(labels.get("containerd.io/snapshot/remote").map(String::as_str), Some("remote snapshot"));
    // a second pull of the same layer (another namespace) finds it
    let e = c
        .prepare(
            &format!("ns2/1/extract-2 {chain}"),
            "",
            &[(REF, &chain), (IMAGE_REF, "h/x"), (DIGEST, HELLO_LAYER), (SIZE, "642560")],
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // the pull is over (its calls returned, and with prefetchOnPull off it leaves no work in the
    // background) and it asked the registry for nothing: a request would have been recorded
    // before the call that made it could return
    assert_eq!(proxy.requests(), vec![], "the registry was asked for something at pull: {}", snap.log_text());
    assert_eq!(cached(&cache, HELLO_LAYER), (vec![], vec![]), "something of the layer is in the cache");
    // a container on it: the device is attached and read by ranges
    let m = c.prepare("ctr1", &chain, &[]).unwrap();
    assert_eq!(m[0].0, "overlay");
    let target = t.path().join("rootfs");
    grpc::mount(&m, &target);
    let hello = std::fs::read(target.join("hello")).unwrap();
    assert_eq!(sha256(&hello), HELLO_SHA);
    grpc::umount(&target);
    assert!(hello_reads_are_ranges(&proxy, &reg) > 0, "the registry never served the blob: {}", reg.log_text());
    c.remove("ctr1").unwrap();
    c.remove(&chain).unwrap();
    stop_and_check_clean(&mut snap, c);
}

#[test]
fn a_remote_layer_pulled_has_its_metadata_alone_fetched_in_the_background() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    let proxy = Proxy::start(&reg.host);
    let cache = t.path().join("cache");
    // prefetchOnPull is on by default
    let mut snap = Snapshotter::start(t.path(), &format!("{}{}", insecure_host(&proxy.host), cache_toml(&cache)));
    let mut c = Client::connect(&snap.socket);
    let chain = prepare_remote_hello(&mut c, &proxy.host);
    // the Commit of the remote layer fetches its metadata in the background, and logs when
    // that is over: from then on, every request it made has been recorded
    let done = snap.wait_for_log(&["layer metadata", "at pull"]);
    assert!(done.contains("layer metadata fetched at pull"), "{done}\n{}", snap.log_text());
    // what was fetched: the layer's metadata ranges (head, tail), kept in the cache as such,
    // and no layer data
    let at_pull = proxy.requests();
    assert_only_metadata_fetched(&at_pull, HELLO_LAYER, HELLO_LAYER_SIZE, &cache);
    hello_reads_are_ranges(&proxy, &reg);
    // a container on it: its device opens the layer from the cached metadata (no metadata
    // range asked for again) and reads the data by ranges
    let meta = snapshotter_ranges(&at_pull, HELLO_LAYER);
    let m = c.prepare("ctr1", &chain, &[]).unwrap();
    let target = t.path().join("rootfs");
    grpc::mount(&m, &target);
    assert_eq!(sha256(&std::fs::read(target.join("hello")).unwrap()), HELLO_SHA);
    grpc::umount(&target);
    let reqs = proxy.requests();
    let again: Vec<(u64, u64)> =
        snapshotter_ranges(&reqs[at_pull.len()..], HELLO_LAYER).into_iter().filter(|r| meta.contains(r)).collect();
    assert!(again.is_empty(), "metadata fetched again when the device opened: {again:?}\n{reqs:#?}");
    hello_reads_are_ranges(&proxy, &reg);
    c.remove("ctr1").unwrap();
    c.remove(&chain).unwrap();
    stop_and_check_clean(&mut snap, c);
}

#[test]
fn writes_survive_a_restart_and_a_committed_writable_layer_is_a_lower() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let (reg, _) = hello_registry(t.path());
    let mut snap = Snapshotter::start(t.path(), &insecure(&reg));
    let mut c = Client::connect(&snap.socket);
    let chain = prepare_remote_hello(&mut c, &reg.host);
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
    // (a blob the registry does not have fails at once, not after retries: the client bounds
    // the call, so a hang fails the test)
    let e = c.prepare("ctr-missing", "sha256:c3", &[]).unwrap_err();
    assert!(e.message().contains(&missing[7..20]) || e.message().contains("404"), "{}", e.message());
    // still usable: the good image runs
    let chain = prepare_remote_hello(&mut c, &reg.host);
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
    let chain = prepare_remote_hello(&mut c, &reg.host);
    let m = c.prepare("w", &chain, &[(WRITABLE, "dir")]).unwrap();
    let target = t.path().join("rootfs");
    grpc::mount(&m, &target);
    // a writer that fsyncs each 1 MiB file and notes it once it is durable (its output in a
    // file; killed if the test fails before it ends)
    let done = t.path().join("done.txt");
    let writer_log = t.path().join("writer.log");
    struct Writer(std::process::Child);
    impl Drop for Writer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut writer = Writer(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "i=0; while true; do dd if=/dev/zero of={0}/f$i bs=64k count=16 conv=fsync 2>/dev/null || exit 3; echo $i >> {1}; i=$((i+1)); done",
                target.display(),
                done.display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(std::fs::File::create(&writer_log).unwrap()))
            .stderr(std::process::Stdio::from(std::fs::File::create(t.path().join("writer.err")).unwrap()))
            .spawn()
            .unwrap(),
    );
    wait_for(
        120,
        || std::fs::read_to_string(&done).map_or(0, |s| s.lines().count()) >= 3,
        || format!("the writer made no progress: {}", snap.log_text()),
    );
    drop(c);
    snap.stop(nix::sys::signal::Signal::SIGKILL);
    // the writer ends with an error: no hang on the dead device (a generous bound)
    let mut status = None;
    wait_for(
        120,
        || {
            status = writer.0.try_wait().unwrap();
            status.is_some()
        },
        || "the writer hangs on the device of a killed snapshotter".into(),
    );
    let status = status.unwrap();
    assert!(!status.success(), "{status}");
    let durable: Vec<String> = std::fs::read_to_string(&done).unwrap().lines().map(str::to_string).collect();
    run(Command::new("umount").arg("-l").arg(&target));
    // the restart removes the dead device's remains and attaches it anew with the durable data
    snap.restart();
    wait_for(
        120,
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
    let (reg, _) = hello_registry(t.path());
    // the registry behind a proxy that records each request before forwarding it
    let proxy = Proxy::start(&reg.host);
    let img = format!("{}/test/hello:obd", proxy.host);
    let snap = Snapshotter::start(t.path(), &insecure_host(&proxy.host));
    let ctrd = Containerd::start_with_cri(t.path(), &snap.socket, &proxy.host);
    cri::pull(&ctrd.socket, &img).unwrap_or_else(|e| panic!("{e}\n{}", snap.log_text()));
    // containerd did not ask for the layer blob (the pull has returned: any request of it was
    // recorded), and it is not in containerd's content store
    let reqs = proxy.requests();
    let by_containerd: Vec<&ProxyRequest> =
        reqs.iter().filter(|r| r.path.ends_with(HELLO_LAYER) && !r.user_agent.starts_with(SNAPSHOTTER_AGENT)).collect();
    assert!(by_containerd.is_empty(), "containerd fetched the layer: {by_containerd:#?}");
    let content = ctrd.ctr(&["content", "ls"]);
    let blobs: Vec<&str> = content.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(!blobs.contains(&HELLO_LAYER), "the layer blob is in the content store: {content}");
    assert_eq!(blobs.len(), 3, "the manifest and config only: {content}");
    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(snaps.contains(HELLO_LAYER), "{snaps}");
    // the container starts from the registry, read by ranges
    ctrd.run_logged(&["--rm", "--snapshotter", "overlaybd", &img, "lazy1"], &["Hello from Docker!"]);
    assert!(hello_reads_are_ranges(&proxy, &reg) > 0, "the registry never served the blob: {}", reg.log_text());
    remove_all_images(&ctrd);
    wait_for_no_snapshot_dirs(&snap);
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
    let chain = prepare_remote_hello(&mut c, &reg.host);
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
        wait_for(120, || c.count("ok") >= min_ok, || format!("the container made no progress: {}", c.snap.log_text()));
        c
    }

    /// How many reads logged `what`. The log is read from the host, in the upper directory of
    /// the container's overlay (under the snapshotter's root): an exec in the container would
    /// need its image's device, gone in these tests, as soon as a page of the binary it runs
    /// is no longer cached.
    fn count(&self, what: &str) -> usize {
        let logs: Vec<std::path::PathBuf> = snapshot_dirs(&self.snap)
            .into_iter()
            .map(|d| self.snap.root.join("snapshots").join(d).join("fs/tmp/log"))
            .filter(|p| p.is_file())
            .collect();
        assert!(logs.len() <= 1, "{logs:?}");
        logs.first()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default().lines().filter(|l| *l == what).count())
            .unwrap_or(0)
    }

    /// The container's reads fail instead of hanging (a generous bound).
    fn wait_for_failing_reads(&self) {
        wait_for(
            120,
            || self.count("err") >= 3,
            || format!("reads on the gone device neither fail nor go on: {}", self.snap.log_text()),
        );
    }

    /// Restarts the snapshotter, removes the container and every image, and checks that no
    /// directory, loop device or mount of them stays.
    fn restart_and_remove_all(&mut self) {
        self.snap.restart();
        // containerd's gRPC channel redials with a backoff: wait until it reaches the new process
        let ctrd = &self.ctrd;
        wait_for(
            120,
            || ctrd.ctr_output(&["snapshots", "--snapshotter", "overlaybd", "usage"]).status.success(),
            || format!("containerd does not reach the restarted snapshotter: {}", ctrd.log_tail()),
        );
        ctrd.ctr(&["task", "kill", "-s", "KILL", self.id]);
        wait_for(
            120,
            || ctrd.ctr_output(&["task", "rm", self.id]).status.success(),
            || format!("the task does not go: {}", ctrd.log_tail()),
        );
        ctrd.ctr(&["container", "rm", self.id]);
        remove_all_images(ctrd);
        let snap = &self.snap;
        wait_for(
            120,
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
    c.ctrd.run_logged(&["--rm", "--snapshotter", "overlaybd", &c.img, "io2", "cat", "/etc/keep"], &["keep"]);
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
    let chain = prepare_remote_hello(&mut c, &reg.host);
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
    // (the Remove detached it; the kernel may drop the loop device a moment later)
    wait_for(
        60,
        || loop_devices_of(&snap.run_dir).len() == devices_before - 1,
        || {
            format!(
                "{devices_before} loop devices before, now {:?}: {}",
                loop_devices_of(&snap.run_dir),
                snap.log_text()
            )
        },
    );
    let a = c.prepare("a1", &chain, &[]).unwrap();
    let b = c.prepare("a2", &chain, &[]).unwrap();
    assert_eq!(a[0].2.last(), b[0].2.last(), "two containers share the image's device");
    // (a detach is done by the Remove that calls for it: once it returned, none happened)
    c.remove("a1").unwrap();
    assert!(!mounts_under(&snap.root).is_empty(), "detached while a2 still uses it");
    c.remove("a2").unwrap();
    wait_for(
        60,
        || mounts_under(&snap.root).is_empty(),
        || format!("{:?}: {}", mounts_under(&snap.root), snap.log_text()),
    );
    c.remove("D").unwrap();
    c.remove(&chain).unwrap();
    stop_and_check_clean(&mut snap, c);
}

#[test]
fn sigterm_with_a_running_container_stops_in_bounded_time_and_its_io_fails_cleanly() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let mut c = IoContainer::start(t.path(), "t1", 5);
    // a graceful stop (an upgrade, systemctl restart) must not hang on the busy device (stop
    // fails the test if the process has not exited after a generous bound)
    let status = c.snap.stop(nix::sys::signal::Signal::SIGTERM).expect("it was running");
    assert!(status.success(), "{status}: {}", c.snap.log_text());
    c.wait_for_failing_reads();
    c.restart_and_remove_all();
    c.finish();
}
