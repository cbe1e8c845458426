//! End-to-end tests of `ctr-obd record-trace` with real parts started here: Debian's containerd,
//! runc and docker-registry, skopeo, and this build's overlaybd snapshotter on the fuse-loop
//! frontend (build it first: `cargo build --release -p overlaybd-snapshotter`). Run as root.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
const BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
const VERSION: &str = "containerd.io/snapshot/overlaybd/version";
const ACCEL: &str = "containerd.io/snapshot/overlaybd/acceleration-layer";
const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TRACE_MAGIC: u32 = 0xC2EF_1820;

/// What the recording container reads.
const READS: &str = "cat /etc/keep; sha256sum /etc/big; ls /bin >/dev/null";

/// Ends a recorded command whose output is looked for in ctr-obd's: 1 MiB of NULs on its
/// stdout, dropped from ctr-obd's output by [`without_drain`]. ctr-obd passes on the task's
/// output from the log file the shim copies the task's stdout pipe to, read once the task has
/// exited: that can be before the shim has copied the last of it. The task cannot finish
/// writing 1 MiB (16 times a pipe's capacity) before the shim has read, and written out, all
/// that came before.
const DRAIN: &str = "dd if=/dev/zero bs=65536 count=16 2>/dev/null";

/// ctr-obd's output without the NULs of [`DRAIN`].
fn without_drain(out: &str) -> String {
    out.replace('\0', "")
}

/// A blob of the content store.
fn content(c: &Containerd, digest: &str) -> Vec<u8> {
    let o = c.ctr_output(&["content", "get", digest]);
    assert!(o.status.success(), "ctr content get {digest}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// A JSON blob of the content store.
fn content_json(c: &Containerd, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&content(c, digest)).unwrap_or_else(|e| panic!("{digest} is not JSON: {e}"))
}

/// The manifest digest an image record points at.
fn image_target(c: &Containerd, name: &str) -> String {
    let ls = c.ctr(&["image", "ls"]);
    let line =
        ls.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no {name}: {ls}"));
    line.split_whitespace().find(|w| w.starts_with("sha256:")).unwrap().to_string()
}

/// The image names in the namespace, sorted.
fn image_names(c: &Containerd) -> Vec<String> {
    let mut v: Vec<String> = c
        .ctr(&["image", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Lines of a `ctr ... ls` after its header.
fn rows(c: &Containerd, args: &[&str]) -> Vec<String> {
    c.ctr(args).lines().skip(1).filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// The only entry of a layer tar: name, mode, bytes.
fn tar_entry(tar_bytes: &[u8]) -> (String, u32, Vec<u8>) {
    let mut a = tar::Archive::new(tar_bytes);
    let mut entries = a.entries().unwrap();
    let mut e = entries.next().expect("an entry").unwrap();
    let name = e.path().unwrap().display().to_string();
    let mode = e.header().mode().unwrap();
    assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut e, &mut data).unwrap();
    drop(e);
    assert!(entries.next().is_none(), "more than one entry in the layer");
    (name, mode, data)
}

/// Raw CRC32C (Castagnoli, register seeded with 0, no inversions), bit by bit.
fn raw_crc32c(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    crc
}

/// Checks a trace file (`overlaybd-format.md` §11): header magic, size and CRC; records of
/// reads of the image's `layers` lowers. The records.
fn check_trace(t: &[u8], layers: u32) -> Vec<(u8, u32, u64, u64)> {
    assert!(t.len() >= 24, "a trace of {} bytes", t.len());
    let u32_at = |i: usize| u32::from_le_bytes(t[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap());
    assert_eq!(u32_at(0), TRACE_MAGIC, "trace magic");
    let size = u64_at(8) as usize;
    assert_eq!(size % 24, 0, "data size {size}");
    assert!(size > 0, "the trace records nothing");
    assert_eq!(t.len(), 24 + size, "the trace's size");
    assert_eq!(u32_at(16), raw_crc32c(&t[24..24 + size]), "trace CRC");
    let recs: Vec<(u8, u32, u64, u64)> = t[24..]
        .chunks(24)
        .map(|r| {
            (
                r[0],
                u32::from_le_bytes(r[4..8].try_into().unwrap()),
                u64::from_le_bytes(r[8..16].try_into().unwrap()),
                u64::from_le_bytes(r[16..24].try_into().unwrap()),
            )
        })
        .collect();
    for r in &recs {
        assert!(r.0 == b'R' || r.0 == b'W', "op {r:?}");
        assert!(r.1 < layers, "layer index {r:?}");
        assert!(r.2 > 0, "count {r:?}");
    }
    recs
}

/// Trace `t` with each record changed by `f`, its CRC made right again: a well-formed trace
/// that does not belong to the image.
fn with_records(t: &[u8], f: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut out = t.to_vec();
    out[24..].chunks_mut(24).for_each(f);
    let crc = raw_crc32c(&out[24..]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The device configs of the snapshotter's snapshots: (snapshot dir, config).
fn device_configs(snap: &Snapshotter) -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(snap.root.join("snapshots")).unwrap().flatten() {
        let cfg = e.path().join("block/config.v1.json");
        if let Ok(b) = std::fs::read(&cfg) {
            out.push((e.path(), serde_json::from_slice(&b).unwrap()));
        }
    }
    out
}

/// The traces of the acceleration layers in the snapshotter's snapshots (`<id>/fs/trace`).
fn accel_trace_files(snap: &Snapshotter) -> Vec<PathBuf> {
    std::fs::read_dir(snap.root.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs/trace"))
        .filter(|p| p.is_file())
        .collect()
}

/// Files left in a directory.
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn record_trace_records_a_trace_into_an_acceleration_layer_that_runs() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let wd = t.path().join("wd");
    let reg = Registry::start();
    let (layout, big_sha) = busybox_overlaybd_image(&t.path().join("img"), "obd");
    let img = reg.push(&layout.dir, "obd", "test/bbtrace");
    let snap = Snapshotter::start(t.path(), &insecure(&reg));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "ctrobd-trace");
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    let old_digest = image_target(&ctrd, &img);
    let old = content_json(&ctrd, &old_digest);
    let old_layers = old["layers"].as_array().unwrap().clone();

    let new = format!("{}/test/bbtrace:obd_trace", reg.host);
    let wd_s = wd.display().to_string();
    let out = without_drain(&ctr_obd(
        &ctrd,
        &tmp,
        &[
            "record-trace",
            // the container ends by itself ("Task finished before timeout"): the time only
            // bounds the recording (and the wait for the trace) of a container slow to start
            "--time",
            "120",
            "--disable-network-isolation",
            "--working-dir",
            &wd_s,
            &img,
            &new,
            "/bin/sh",
            "-c",
            &format!("{READS}; {DRAIN}"),
        ],
    ));
    // the container ran the command (its output is passed on), the trace was collected
    assert!(out.contains("Task is running") && out.contains("keep\n") && out.contains(&big_sha), "{out}");
    assert!(out.contains("Found OK file"), "{out}");
    assert!(out.contains(&format!("New image {new} is created")), "{out}");
    let digest = out.lines().find_map(|l| l.strip_prefix("new image digest: ")).expect("the digest").to_string();
    assert_eq!(image_target(&ctrd, &new), digest);

    // nothing is left: lease, container, rootfs snapshot, trace files
    assert!(rows(&ctrd, &["leases", "ls"]).is_empty(), "{:?}", rows(&ctrd, &["leases", "ls"]));
    assert!(rows(&ctrd, &["containers", "ls"]).is_empty(), "{:?}", rows(&ctrd, &["containers", "ls"]));
    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(!snaps.contains("Active"), "{snaps}");
    assert!(files_in(&wd).is_empty(), "{:?}", files_in(&wd));
    // the old image's device was attached with the record labels (rootfs labels, not the image's)
    let recorded_at: Vec<String> = device_configs(&snap)
        .into_iter()
        .filter_map(|(_, c)| c["recordTracePath"].as_str().map(str::to_string))
        .collect();
    assert!(recorded_at.iter().any(|p| p.starts_with(&format!("{wd_s}/record-trace-"))), "{recorded_at:?}");

    // the new manifest: the old layers and the acceleration layer, same media type
    let m = content_json(&ctrd, &digest);
    assert_eq!(m["mediaType"], old["mediaType"]);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), old_layers.len() + 1, "{m}");
    assert_eq!(&layers[..old_layers.len()], &old_layers[..]);
    let top = &layers[old_layers.len()];
    assert_eq!(top["mediaType"], OCI_TAR);
    let a = &top["annotations"];
    assert_eq!(a[ACCEL], "yes", "{top}");
    assert_eq!(a[BLOB_DIGEST], top["digest"], "{top}");
    assert_eq!(a[BLOB_SIZE].as_str().unwrap(), top["size"].to_string(), "{top}");
    assert_eq!(a[VERSION], "0.1.0", "{top}");
    // the config: history entry first, diff ID appended, the rest kept
    let old_config = content_json(&ctrd, old["config"]["digest"].as_str().unwrap());
    let config = content_json(&ctrd, m["config"]["digest"].as_str().unwrap());
    assert_eq!(m["config"]["mediaType"], old["config"]["mediaType"]);
    assert_eq!(config["history"][0]["created_by"], "Acceleration Layer", "{config}");
    assert_eq!(config["history"][0]["created"], config["created"]);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let old_diff_ids = old_config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(&diff_ids[..old_diff_ids.len()], &old_diff_ids[..]);
    assert_eq!(diff_ids.last().unwrap(), &top["digest"]);
    assert_eq!(config["config"], old_config["config"]);
    // the layer: a tar of `trace` (0444), a valid trace of reads of the image's layer
    let blob = content(&ctrd, top["digest"].as_str().unwrap());
    let (name, mode, trace) = tar_entry(&blob);
    assert_eq!((name.as_str(), mode), ("trace", 0o444));
    let recs = check_trace(&trace, old_layers.len() as u32);
    eprintln!("{} trace records", recs.len());

    // NEW runs through the snapshotter: the acceleration layer's device config says so and
    // holds the trace as its last lower
    let ran = run_container(&ctrd, &t.path().join("out"), &new, "accel1", READS);
    assert!(ran.contains("keep\n") && ran.contains(&big_sha), "{ran}");
    let accel: Vec<(PathBuf, serde_json::Value)> =
        device_configs(&snap).into_iter().filter(|(_, c)| c["accelerationLayer"] == true).collect();
    assert_eq!(accel.len(), 1, "{accel:?}");
    let (dir, cfg) = &accel[0];
    let lowers = cfg["lowers"].as_array().unwrap();
    assert_eq!(lowers.len(), old_layers.len() + 1, "{cfg}");
    let last = lowers.last().unwrap()["dir"].as_str().unwrap();
    assert_eq!(Path::new(last), dir.join("fs"));
    assert_eq!(std::fs::read(Path::new(last).join("trace")).unwrap(), trace);
    assert!(cfg.get("recordTracePath").is_none(), "{cfg}");

    // NEW is pushed with ctr-obd push: to another repository, the lazily pulled layer is
    // mounted from the one it came from, the rest uploaded; to the same one, the layer is there
    let published = format!("{}/test/published:trace", reg.host);
    let out = ctr_obd(&ctrd, &tmp, &["push", "--plain-http", &published, &new]);
    eprintln!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), old_layers.len() + 3, "{out}");
    assert!(lines[0].ends_with("mounted from the source repository"), "{out}");
    assert!(lines[old_layers.len()].ends_with("uploaded"), "the acceleration layer: {out}");
    assert!(lines[old_layers.len() + 1].starts_with("config ") && lines[old_layers.len() + 1].ends_with("uploaded"));
    assert_eq!(lines.last().unwrap(), &format!("pushed {published} ({digest})"));
    let again = ctr_obd(&ctrd, &tmp, &["push", "--plain-http", &format!("{}/test/bbtrace:copy", reg.host), &new]);
    assert!(again.lines().next().unwrap().ends_with("already in the repository"), "{again}");
    // what the registry serves is NEW, and runs when pulled lazily from there
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &published]);
    assert_eq!(image_target(&ctrd, &published), digest);
    let ran = run_container(&ctrd, &t.path().join("out"), &published, "pub1", READS);
    assert!(ran.contains("keep\n") && ran.contains(&big_sha), "{ran}");
    ctrd.ctr(&["image", "rm", "--sync", &published]);

    // removing NEW removes what it holds; OLD still runs
    ctrd.ctr(&["image", "rm", "--sync", &new]);
    let ran = run_container(&ctrd, &t.path().join("out"), &img, "old1", READS);
    assert!(ran.contains(&big_sha), "{ran}");

    // a trace that cannot be used (corrupt, truncated, from another image) is refused with one
    // log line naming it and why; the container still starts and reads what the image holds.
    // Each time the image is pulled afresh (its device opens anew) and its trace replaced.
    let mut flipped = trace.clone();
    flipped[24 + 9] ^= 0x40;
    let foreign = with_records(&trace, |r| {
        let off = u64::from_le_bytes(r[16..24].try_into().unwrap()) + (1 << 40);
        r[16..24].copy_from_slice(&off.to_le_bytes());
    });
    let unusable: [(&str, Vec<u8>, &str); 3] = [
        ("corrupt", flipped, "checksum mismatch"),
        ("truncated", trace[..trace.len() - 7].to_vec(), "truncated"),
        ("foreign", foreign, "outside its data area"),
    ];
    // (the snapshots of NEW and PUBLISHED were removed by the collections of `image rm --sync`)
    wait_for_some(
        "the removal of the acceleration layers' snapshots",
        WAIT_S,
        || accel_trace_files(&snap).is_empty().then_some(()),
        || format!("{:?}", accel_trace_files(&snap)),
    );
    for (name, bad, reason) in unusable {
        let log_pull = snap.log_text().len();
        ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &published]);
        let traces = accel_trace_files(&snap);
        assert_eq!(traces.len(), 1, "{name}: one acceleration layer expected: {traces:?}");
        let dir = traces[0].parent().and_then(Path::parent).unwrap().to_path_buf();
        let id = dir.file_name().unwrap().to_string_lossy().into_owned();
        // the Commit of the acceleration layer started a warm-up (prefetchOnPull) that reads
        // its trace in a thread of its own: it has read the good one (its first line is
        // logged after that, or a line that there is none) before the trace is replaced
        let warmup = wait_for_snapshotter_line(&snap, log_pull, "prefetch at pull", &[("id", &id)]);
        eprintln!("{name}: {warmup}");
        std::fs::write(&traces[0], &bad).unwrap();
        let log_before = snap.log_text().len();
        let ran = run_container(&ctrd, &t.path().join("out"), &published, name, READS);
        assert!(ran.contains("keep\n") && ran.contains(&big_sha), "{name}: {ran}");
        // the device opened for the container refused the trace; once the snapshot is gone
        // (its device detached before its directory is removed) nothing reads it again, and
        // every line about it is in the log
        ctrd.ctr(&["image", "rm", "--sync", &published]);
        wait_for_some(
            &format!("{name}: the removal of snapshot {id}"),
            WAIT_S,
            || (!dir.exists()).then_some(()),
            || snapshotter_log_from(&snap, log_before),
        );
        let log = snapshotter_log_from(&snap, log_before);
        let refused: Vec<&str> = log.lines().filter(|l| l.contains("trace ignored")).collect();
        assert_eq!(refused.len(), 1, "{name}: one line expected:\n{log}");
        assert!(refused[0].contains(traces[0].to_str().unwrap()) && refused[0].contains(reason), "{name}: {log}");
        assert!(!log.contains("panicked"), "{name}: {log}");
        eprintln!("{name}: {}", refused[0]);
    }

    // a lazily pulled layer gone from every repository: push names it, and tags nothing
    reg.delete_blob(old_layers[0]["digest"].as_str().unwrap());
    let lost = format!("{}/other/y:t", reg.host);
    let e = ctr_obd_fails(&ctrd, &tmp, &["push", "--plain-http", &lost, &img]);
    assert!(e.contains("layer 0") && e.contains("content store") && e.contains("mounting it from test/bbtrace"), "{e}");
    let inspect = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{lost}")])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "the tag was pushed: {}", String::from_utf8_lossy(&inspect.stdout));
    drop(ctrd);
    drop(snap);
}

#[test]
fn record_trace_bad_input_is_refused_and_leaves_nothing() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let wd = t.path().join("wd");
    let wd_s = wd.display().to_string();
    let reg = Registry::start();
    let (obd, _) = busybox_overlaybd_image(&t.path().join("obd"), "obd");
    let img = reg.push(&obd.dir, "obd", "test/bbtrbad");
    let (plain, _) = busybox_image(&t.path().join("plain"));
    let plain_img = reg.push(&plain.dir, "latest", "test/bbtrplain");
    let snap = Snapshotter::start(t.path(), &insecure(&reg));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "ctrobd-trbad");
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    ctrd.ctr(&["image", "pull", "--plain-http", "--snapshotter", "overlaybd", &plain_img]);
    let snapshots_before = rows(&ctrd, &["snapshots", "--snapshotter", "overlaybd", "ls"]);
    let nothing_left = |what: &str, images: &[&str]| {
        let mut want: Vec<String> = images.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(image_names(&ctrd), want, "image records after {what}");
        assert!(rows(&ctrd, &["leases", "ls"]).is_empty(), "leases after {what}");
        assert!(rows(&ctrd, &["containers", "ls"]).is_empty(), "containers after {what}");
        let snaps = rows(&ctrd, &["snapshots", "--snapshotter", "overlaybd", "ls"]);
        assert!(snaps.iter().all(|s| !s.contains("Active")), "active snapshots after {what}: {snaps:?}");
        assert!(files_in(&wd).is_empty(), "files in the working dir after {what}: {:?}", files_in(&wd));
    };
    let rt = |extra: &[&str]| -> String {
        let mut v = vec!["record-trace", "--working-dir", &wd_s];
        v.extend_from_slice(extra);
        ctr_obd_fails(&ctrd, &tmp, &v)
    };
    let new = format!("{}/test/bbtrbad:trace", reg.host);

    let e = rt(&["--time", "0", "--disable-network-isolation", &img, &new]);
    assert!(e.contains("--time 0"), "{e}");
    let list = t.path().join("list");
    std::fs::write(&list, "/etc/keep\n/etc/big\n").unwrap();
    let list_s = list.display().to_string();
    let e = rt(&["--priority_list", &list_s, &img, &new, "/bin/sh"]);
    assert!(e.contains("--priority_list") && e.contains("COMMAND"), "{e}");
    let e = rt(&["--disable-network-isolation", &plain_img, &new]);
    assert!(e.contains(&format!("{plain_img} is not an overlaybd image")) && e.contains(BLOB_DIGEST), "{e}");
    let e = rt(&["--disable-network-isolation", "nosuch.example/x:1", &new]);
    assert!(e.contains("image nosuch.example/x:1 is not in containerd's namespace"), "{e}");
    nothing_left("bad flags and images", &[&img, &plain_img]);
    // no CNI plugins: named, with the way out, before anything is made
    let e = rt(&["--cni-plugin-dir", "/nonexistent/cni", &img, &new]);
    assert!(e.contains("/nonexistent/cni") && e.contains("--disable-network-isolation"), "{e}");
    nothing_left("missing CNI plugins", &[&img, &plain_img]);

    // a priority list becomes the layer as it is (no container)
    let out = ctr_obd(&ctrd, &tmp, &["record-trace", "--working-dir", &wd_s, "--priority_list", &list_s, &img, &new]);
    assert!(out.contains(&format!("New image {new} is created")), "{out}");
    let m = content_json(&ctrd, &image_target(&ctrd, &new));
    let top = m["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(top["annotations"][ACCEL], "yes");
    let (name, mode, data) = tar_entry(&content(&ctrd, top["digest"].as_str().unwrap()));
    assert_eq!((name.as_str(), mode, data), ("trace", 0o444, std::fs::read(&list).unwrap()));
    nothing_left("a priority list", &[&img, &plain_img, &new]);

    // NEW exists; OLD already has an acceleration layer
    let e = rt(&["--disable-network-isolation", &img, &new]);
    assert!(e.contains(&format!("image {new} already exists")), "{e}");
    let newer = format!("{new}2");
    let e = rt(&["--disable-network-isolation", &new, &newer]);
    assert!(e.contains("already has an acceleration layer"), "{e}");
    nothing_left("existing names and acceleration layers", &[&img, &plain_img, &new]);
    // a command that does not exist in the image: the task cannot start, all is removed
    let log_from = snap.log_text().len();
    let e = rt(&["--time", "60", "--disable-network-isolation", &img, &newer, "/nonexistent"]);
    assert!(e.contains("Tasks.Start") || e.contains("Tasks.Create"), "{e}");
    // the image's device attached with the record labels and recorded; ctr-obd removed the
    // lock and the trace files. The device writes the trace when it sees the lock gone (in a
    // thread of its own, polling): once it has, nothing more is written into the working dir
    eprintln!("{}", wait_for_snapshotter_line(&snap, log_from, "trace dumped", &[]));
    nothing_left("a command that cannot start", &[&img, &plain_img, &new]);
    let snaps = rows(&ctrd, &["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(snaps.len() <= snapshots_before.len() + 1, "{snapshots_before:?} -> {snaps:?}");
    drop(ctrd);
    drop(snap);
}

/// Where Debian's containernetworking-plugins puts the CNI plugins.
const DEBIAN_CNI: &str = "/usr/lib/cni";

/// The CNI bridge of ctr-obd's network, and the host-local plugin's store of its addresses.
const CNI_BRIDGE: &str = "r-trace-br0";
const CNI_STORE: &str = "/var/lib/cni/networks/record-trace-cni";

/// Removes on drop (also when the test fails) the CNI bridge and address store the recording's
/// network made, unless they were there before: the plugins' DEL leaves them (as go-cni's do).
struct CniLeftovers {
    bridge_was_there: bool,
    store_was_there: bool,
}

impl CniLeftovers {
    fn note() -> CniLeftovers {
        CniLeftovers {
            bridge_was_there: Path::new("/sys/class/net").join(CNI_BRIDGE).exists(),
            store_was_there: Path::new(CNI_STORE).exists(),
        }
    }
}

impl Drop for CniLeftovers {
    fn drop(&mut self) {
        if !self.bridge_was_there && Path::new("/sys/class/net").join(CNI_BRIDGE).exists() {
            let _ = std::process::Command::new("ip").args(["link", "del", CNI_BRIDGE]).status();
        }
        if !self.store_was_there {
            let _ = std::fs::remove_dir_all(CNI_STORE);
        }
    }
}

/// The trace of the acceleration layer of image `name`.
fn accel_trace(c: &Containerd, name: &str) -> Vec<u8> {
    let m = content_json(c, &image_target(c, name));
    let top = m["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(top["annotations"][ACCEL], "yes", "{m}");
    let (name, _, trace) = tar_entry(&content(c, top["digest"].as_str().unwrap()));
    assert_eq!(name, "trace");
    trace
}

#[test]
fn record_trace_in_a_cni_network_stops_a_task_that_ignores_sigterm_and_forwards_signals() {
    require_real_parts();
    let _cni = CniLeftovers::note();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let wd_s = t.path().join("wd").display().to_string();
    let reg = Registry::start();
    let (layout, _) = busybox_overlaybd_image(&t.path().join("img"), "obd");
    let img = reg.push(&layout.dir, "obd", "test/bbtrnet");
    // autoRemoveDev: the image's device detaches with its last container, so that the image
    // can be recorded again
    let snap = Snapshotter::start(t.path(), &format!("autoRemoveDev = true\n{}", insecure(&reg)));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "ctrobd-trnet");
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);

    // in the CNI bridge network; the shell (PID 1: SIGTERM has no effect) is killed with SIGKILL.
    // The task is stopped after --time, killed after as long again: it must have printed by
    // then (a generous time: a loaded machine may take seconds to start it), and it must not
    // end by itself before (it sleeps far longer)
    let net = format!("{}/test/bbtrnet:net", reg.host);
    let cmd = "cat /proc/net/dev; cat /etc/keep; sleep 3600";
    let (args, networked): (Vec<&str>, bool) = if Path::new(DEBIAN_CNI).join("bridge").is_file() {
        (vec!["--cni-plugin-dir", DEBIAN_CNI], true)
    } else {
        eprintln!(
            "NOT TESTED: the CNI network (no plugins in {DEBIAN_CNI}: apt-get install containernetworking-plugins)"
        );
        (vec!["--disable-network-isolation"], false)
    };
    let mut v = vec!["record-trace", "--time", "10", "--working-dir", &wd_s];
    v.extend_from_slice(&args);
    v.extend_from_slice(&[&img, &net, "/bin/sh", "-c", cmd]);
    let out = ctr_obd(&ctrd, &tmp, &v);
    assert!(out.contains("Timeout, stop recording") && out.contains("Reached maxTaskRunningTime, force kill"), "{out}");
    assert!(out.contains("keep\n") && out.contains(&format!("New image {net} is created")), "{out}");
    if networked {
        assert!(out.contains("eth0:") && out.contains("lo:"), "no CNI interfaces in the container: {out}");
        let ns = run(std::process::Command::new("ip").args(["netns", "list"]));
        assert!(!ns.contains("record-trace-"), "network namespaces left: {ns}");
    } else {
        assert!(!out.contains("eth0:"), "{out}");
    }
    check_trace(&accel_trace(&ctrd, &net), 1);
    assert!(rows(&ctrd, &["leases", "ls"]).is_empty() && rows(&ctrd, &["containers", "ls"]).is_empty());

    // SIGINT during the recording goes to the task (which exits on it); the image is made
    let sig = format!("{}/test/bbtrnet:sig", reg.host);
    let script = format!("trap 'echo got-int; {DRAIN}; exit 0' INT; cat /etc/keep; while true; do sleep 0.1; done");
    let mut child = ctr_obd_command(
        &ctrd,
        &tmp,
        &[
            "record-trace",
            "--time",
            "60",
            "--working-dir",
            &wd_s,
            "--disable-network-isolation",
            &img,
            &sig,
            "/bin/sh",
            "-c",
            &script,
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::fs::File::create(t.path().join("sig.stderr")).unwrap())
    .spawn()
    .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "ctr-obd ended before the task ran: {seen}");
        seen.push_str(&line);
        if line.starts_with("Task is running") {
            break;
        }
    }
    // the task's shell has its trap set (SIGINT caught) before ctr-obd gets the signal. (Its
    // pid is the task's from the start, first `runc init`'s, a Go program that catches every
    // signal and execs the shell after `Tasks.Start` has returned: the shell's command line
    // first, then its caught signals, which an exec resets before the new command line shows.)
    let tasks = ctrd.ctr(&["task", "ls"]);
    let pid = tasks.lines().nth(1).and_then(|l| l.split_whitespace().nth(1)).expect("the task's pid").to_string();
    wait_until("the task's SIGINT trap", WAIT_S, || {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.starts_with(b"/bin/sh\0-c\0trap ") {
            return false;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim).unwrap_or("0");
        u64::from_str_radix(caught, 16).is_ok_and(|m| m & (1 << (2 - 1)) != 0)
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    std::io::Read::read_to_string(&mut stdout, &mut seen).unwrap();
    let status = child.wait().unwrap();
    let seen = without_drain(&seen);
    let stderr = std::fs::read_to_string(t.path().join("sig.stderr")).unwrap_or_default();
    assert!(status.success(), "{seen}\n{stderr}");
    // status 0: the task ended through its SIGINT trap (SIGTERM does not reach its init, SIGKILL
    // gives 137)
    assert!(seen.contains("Received signal 2") && seen.contains("got-int"), "{seen}\n{stderr}");
    assert!(seen.contains("Task exited with status 0\n"), "{seen}\n{stderr}");
    assert!(seen.contains(&format!("New image {sig} is created")), "{seen}\n{stderr}");
    check_trace(&accel_trace(&ctrd, &sig), 1);
    assert!(rows(&ctrd, &["leases", "ls"]).is_empty() && rows(&ctrd, &["containers", "ls"]).is_empty());
    assert!(files_in(Path::new(&wd_s)).is_empty(), "{:?}", files_in(Path::new(&wd_s)));
    drop(ctrd);
    drop(snap);
}
