//! End-to-end tests of `ctr-obd` with real parts started here: Debian's containerd, runc and
//! docker-registry, skopeo, and this build's overlaybd snapshotter on the fuse-loop frontend.
//! Run as root.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
const BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
const FS_TYPE: &str = "containerd.io/snapshot/overlaybd/blob-fs-type";
const VERSION: &str = "containerd.io/snapshot/overlaybd/version";

/// What the test image's files look like from inside a container.
const LOOK: &str = "cat /etc/keep; cat /etc/new 2>/dev/null; [ ! -e /etc/gone ] && echo nogone; \
                    readlink /etc/link; sha256sum /etc/big; ls /etc; echo w > /tmp/x && cat /tmp/x";

/// The layer digests of the only manifest of an OCI layout.
fn layout_layers(dir: &Path) -> Vec<String> {
    let read = |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = read(&dir.join("index.json"));
    let m = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest = read(&dir.join("blobs/sha256").join(m));
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

/// Tags the layout's manifest also as `tag`, wrapped in an OCI index for the host platform.
fn add_index_tag(layout: &OciLayout, tag: &str) {
    let path = layout.dir.join("index.json");
    let mut top: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut m = top["manifests"][0].clone();
    m.as_object_mut().unwrap().remove("annotations");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [m],
    })
    .to_string();
    let d = layout.blob(index.as_bytes());
    top["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": d,
        "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    std::fs::write(&path, top.to_string()).unwrap();
}

/// The digests in containerd's content store.
fn content_digests(c: &Containerd) -> Vec<String> {
    c.ctr(&["content", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_string)
        .collect()
}

/// The image names in the namespace.
fn image_names(c: &Containerd) -> Vec<String> {
    c.ctr(&["image", "ls"]).lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// The leases in the namespace.
fn leases(c: &Containerd) -> Vec<String> {
    c.ctr(&["leases", "ls"]).lines().skip(1).filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// Nanoseconds since the epoch, now (the clock the registry stamps its log lines with).
fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// Nanoseconds since the epoch of an RFC 3339 time as Go writes it
/// (`2024-05-06T07:08:09.123456789Z`, or with a `+02:00` offset).
fn rfc3339_ns(s: &str) -> Option<i128> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (clock, offset_s) = match rest.strip_suffix('Z') {
        Some(c) => (c, 0),
        None => {
            let (c, zone) = rest.split_at(rest.rfind(['+', '-'])?);
            let (hh, mm) = zone[1..].split_once(':')?;
            let off = hh.parse::<i64>().ok()? * 3600 + mm.parse::<i64>().ok()? * 60;
            (c, if zone.starts_with('-') { -off } else { off })
        }
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':').map(str::parse::<i64>);
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let frac_ns: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}")[..9].parse().ok()? };
    // days from the civil date (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(frac_ns))
}

/// Nanoseconds of a Go duration as Go writes it (`1m2.5s`, `850.2µs`, `12ms`, `0s`).
fn go_duration_ns(s: &str) -> Option<i128> {
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let (num, tail) = rest.split_at(rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?);
        let (unit, tail) = tail.split_at(tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len()));
        let scale = match unit {
            "h" => 3.6e12,
            "m" => 6e10,
            "s" => 1e9,
            "ms" => 1e6,
            "\u{b5}s" | "\u{3bc}s" | "us" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        total += num.parse::<f64>().ok()? * scale;
        rest = tail;
    }
    Some(total as i128)
}

/// When the registry began serving the request of a line of its log: the line's `time` (when
/// it was written, after the response) less its `http.response.duration`; ns since the epoch.
fn served_from_ns(line: &str) -> i128 {
    let parse = || {
        let time = line.strip_prefix("time=\"")?.split('"').next()?;
        let took = line.split_whitespace().find_map(|w| w.strip_prefix("http.response.duration="))?;
        Some(rfc3339_ns(time)? - go_duration_ns(took)?)
    };
    parse().unwrap_or_else(|| panic!("no time or duration in the registry's log line {line}"))
}

/// Blob GETs of `digest` in the registry's log `log` that the registry began serving at or
/// after `since` (ns since the epoch): the requests made after that moment, wherever their
/// lines are (the registry writes a line after its response, so the line of a request answered
/// earlier may come after a later one's).
fn blob_gets(log: &str, since: i128, digest: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("http.request.method=GET") && l.contains(&format!("/blobs/{digest}")))
        .filter(|l| served_from_ns(l) >= since)
        .map(str::to_string)
        .collect()
}

/// The registry's log once it holds the line of a request of ours sent now: the lines of the
/// requests answered before are in by then (the registry writes each as it finishes the
/// response). For completeness only: a check that something did not happen also needs an
/// event proving its cause is over, and [`blob_gets`]' start time.
fn registry_log_after_probe(reg: &Registry) -> String {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let tag = format!("{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
    let mut s = TcpStream::connect(&reg.host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(WAIT_S))).unwrap();
    write!(s, "GET /v2/?probe={tag} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", reg.host).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let needle = format!("probe={tag}");
    wait_for_some(
        "the registry's log line of a probe request",
        WAIT_S,
        || Some(reg.log_text()).filter(|l| l.contains(&needle)),
        || reg.log_text(),
    )
}

/// Waits until the snapshotter's background fetch of remote layer `digest`'s metadata, started
/// when the layer was committed at pull (`prefetchOnPull`), has ended (its log line after byte
/// `from` of the snapshotter's log): its requests are all answered then.
fn wait_for_layer_metadata_at_pull(snap: &Snapshotter, from: usize, digest: &str) {
    wait_for_some(
        &format!("the end of the fetch of layer {digest}'s metadata at pull"),
        WAIT_S,
        || {
            snapshotter_log_from(snap, from)
                .lines()
                .any(|l| l.contains("layer metadata") && l.contains("at pull") && has_field(l, "blob", digest))
                .then_some(())
        },
        || snapshotter_log_from(snap, from),
    )
}

/// The id (directory name) of the snapshotter's only snapshot with a device config.
fn snaps_id(snap: &Snapshotter) -> String {
    let ids: Vec<String> = std::fs::read_dir(snap.root.join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("block/config.v1.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// A JSON blob of the content store.
fn content_json(c: &Containerd, digest: &str) -> serde_json::Value {
    let o = c.ctr_output(&["content", "get", digest]);
    assert!(o.status.success(), "ctr content get {digest}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{digest} is not JSON: {e}"))
}

/// Names of leftover conversion work directories under `tmp`.
fn work_dirs(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<String>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("ctr-obd-conv-"))
        .collect()
}

#[test]
fn rpull_of_an_overlaybd_image_fetches_no_layer_and_the_image_runs() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let reg = Registry::start();
    let (layout, big_sha) = busybox_overlaybd_image(&t.path().join("img"), "obd");
    let img = reg.push(&layout.dir, "obd", "test/bbobd");
    let layers = layout_layers(&layout.dir);
    assert_eq!(layers.len(), 1);
    // no mirrorRegistry entry: --plain-http alone tells the snapshotter the registry's scheme
    let snap = Snapshotter::start(t.path(), "");
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "ctrobd-lazy");
    let pulled_from = now_ns();
    let snap_log = snap.log_text().len();
    let out = ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", "--label", "team=storage", &img]);
    assert_eq!(out.lines().last(), Some("done"), "{out}");
    assert!(out.contains("committed by the snapshotter"), "{out}");
    // no layer blob left the registry, only the layer's metadata by ranges (the snapshotter
    // fetches it in the background after the pull, prefetchOnPull: awaited), and none is in
    // the content store
    wait_for_layer_metadata_at_pull(&snap, snap_log, &layers[0]);
    let gets = blob_gets(&registry_log_after_probe(&reg), pulled_from, &layers[0]);
    let written: u64 = gets
        .iter()
        .filter_map(|l| l.split("http.response.written=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(gets.iter().all(|l| l.contains("http.response.status=206")) && written <= 256 << 10, "{gets:#?}");
    let content = content_digests(&ctrd);
    assert!(!content.contains(&layers[0]), "the layer blob is in the content store: {content:?}");
    assert_eq!(content.len(), 2, "{content:?}");
    // the image record, its label, and the lease is gone
    let ls = ctrd.ctr(&["image", "ls"]);
    assert!(ls.contains(&img) && ls.contains("team=storage"), "{ls}");
    assert!(leases(&ctrd).is_empty(), "{:?}", leases(&ctrd));
    // the layer is a committed snapshot of the overlaybd snapshotter under its chain ID
    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(snaps.contains(&layers[0]) && snaps.contains("Committed"), "{snaps}");
    // the layer's device reads it over plain HTTP from the start (no TLS attempt first)
    let cfg = snap.root.join(format!("snapshots/{}/block/config.v1.json", snaps_id(&snap)));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    assert_eq!(cfg["repoBlobUrl"], format!("http://{}/v2/test/bbobd/blobs", reg.host), "{cfg}");
    // pulling again finds the layer unpacked
    let again = ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    assert!(again.contains("already unpacked"), "{again}");
    // the same image behind an index: the host platform's manifest is chosen, the index stored,
    // and nothing of the layer is fetched. (Before any container runs on the layer: a device
    // reads ahead in the background, so after a container the registry could still be serving
    // the layer. The metadata fetch at pull has ended, awaited above; requests made before
    // `idx_from` do not count wherever their log lines are.)
    add_index_tag(&layout, "idx");
    let idx = format!("{}/test/bbobd:idx", reg.host);
    run(std::process::Command::new("skopeo")
        .args(["copy", "-q", "--all", "--dest-tls-verify=false", "--preserve-digests"])
        .arg(format!("oci:{}:idx", layout.dir.display()))
        .arg(format!("docker://{idx}")));
    let idx_from = now_ns();
    let out = ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &idx]);
    assert_eq!(out.lines().last(), Some("done"), "{out}");
    let gets = blob_gets(&registry_log_after_probe(&reg), idx_from, &layers[0]);
    assert!(gets.is_empty(), "{gets:#?}");
    let ls = ctrd.ctr(&["image", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with(&idx) && l.contains("application/vnd.oci.image.index.v1+json")), "{ls}");
    let content = ctrd.ctr(&["content", "ls"]);
    assert_eq!(content_digests(&ctrd).len(), 3, "index, manifest, config: {content}");
    assert!(
        content.contains("containerd.io/gc.ref.content.m.0=")
            && content.contains("containerd.io/gc.ref.snapshot.overlaybd="),
        "{content}"
    );
    // a container runs on it, read lazily (ranges) from the registry
    let ran = run_container(&ctrd, &t.path().join("out"), &img, "lazy1", LOOK);
    for want in ["keep\n", &big_sha, "\nw\n"] {
        assert!(ran.contains(want), "{want:?} not in the container's output: {ran}");
    }
    let gets = blob_gets(&registry_log_after_probe(&reg), pulled_from, &layers[0]);
    assert!(!gets.is_empty() && gets.iter().all(|l| l.contains("http.response.status=206")), "{gets:#?}");
    // the collector follows the labels: with the first image removed, the index holds the
    // manifest, config and snapshot; with both removed, nothing is left (`--sync`: the
    // collection is over when `ctr` returns; still awaited, bounded)
    ctrd.ctr(&["image", "rm", "--sync", &img]);
    assert_eq!(content_digests(&ctrd).len(), 3, "{}", ctrd.ctr(&["content", "ls"]));
    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(snaps.contains(&layers[0]), "the index's snapshot was collected: {snaps}");
    let ran = run_container(&ctrd, &t.path().join("out"), &idx, "lazy2", LOOK);
    assert!(ran.contains(&big_sha), "{ran}");
    ctrd.ctr(&["image", "rm", "--sync", &idx]);
    let snaps = || ctrd.ctr(&["snapshots", "--snapshotter", "overlaybd", "ls"]);
    wait_for_some(
        "the collection of the snapshots and content after the images were removed",
        WAIT_S,
        || (snaps().lines().count() == 1 && content_digests(&ctrd).is_empty()).then_some(()),
        || format!("snapshots left: {}\ncontent left: {:?}", snaps(), content_digests(&ctrd)),
    );
    drop(ctrd);
    drop(snap);
}

#[test]
fn rpull_of_a_plain_image_or_with_download_blobs_applies_the_layers() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let reg = Registry::start();
    let (plain, big_sha) = busybox_image(&t.path().join("plain"));
    let plain_img = reg.push(&plain.dir, "latest", "test/bbplain");
    let (obd, _) = busybox_overlaybd_image(&t.path().join("obd"), "obd");
    let obd_img = reg.push(&obd.dir, "obd", "test/bbobd");
    let snap = Snapshotter::start(t.path(), &insecure(&reg));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "ctrobd-full");
    // not an overlaybd image: the snapshotter hands out mounts, the layers are fetched and applied
    let out = ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &plain_img]);
    assert_eq!(out.matches("downloaded and applied").count(), 2, "{out}");
    let content = content_digests(&ctrd);
    for l in layout_layers(&plain.dir) {
        assert!(content.contains(&l), "layer {l} is not in the content store: {content:?}");
    }
    let run = run_container(&ctrd, &t.path().join("out"), &plain_img, "plain1", LOOK);
    for want in ["keep\n", "second\n", "nogone\n", &big_sha, "\nw\n"] {
        assert!(run.contains(want), "{want:?} not in the container's output: {run}");
    }
    // an overlaybd image with --download-blobs: its blob is fetched and applied as well
    let out = ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", "--download-blobs", &obd_img]);
    assert!(out.contains("downloaded and applied"), "{out}");
    let layers = layout_layers(&obd.dir);
    assert!(content_digests(&ctrd).contains(&layers[0]));
    let run = run_container(&ctrd, &t.path().join("out"), &obd_img, "obd1", LOOK);
    assert!(run.contains("keep\n") && run.contains(&big_sha), "{run}");
    assert!(leases(&ctrd).is_empty(), "{:?}", leases(&ctrd));
    drop(ctrd);
    drop(snap);
}

#[test]
fn obdconv_converts_a_pulled_image_reproducibly_and_it_runs_the_same() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let reg = Registry::start();
    let (plain, big_sha) = busybox_image(&t.path().join("plain"));
    let src = reg.push(&plain.dir, "latest", "test/bbconv");
    let snap = Snapshotter::start(t.path(), "");
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "ctrobd-conv");
    ctrd.ctr(&["image", "pull", "--plain-http", "--snapshotter", "overlaybd", &src]);
    let dst = format!("{}/test/bbconv:obd", reg.host);
    let out = ctr_obd(&ctrd, &tmp, &["obdconv", "--vsize", "8", &src, &dst]);
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("new image digest: "))
        .unwrap_or_else(|| panic!("no digest printed: {out}"))
        .to_string();
    assert!(work_dirs(&tmp).is_empty(), "work directories left: {:?}", work_dirs(&tmp));
    assert!(leases(&ctrd).is_empty(), "{:?}", leases(&ctrd));
    // a Docker schema 2 manifest of overlaybd layers: OCI tar, the annotations, diff ID = digest
    let m = content_json(&ctrd, &digest);
    assert_eq!(m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{m}");
    for l in layers {
        assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar", "{l}");
        let a = &l["annotations"];
        assert_eq!(a[BLOB_DIGEST], l["digest"], "{l}");
        assert_eq!(a[BLOB_SIZE].as_str().unwrap(), l["size"].to_string(), "{l}");
        assert_eq!(a[FS_TYPE], "ext4", "{l}");
        assert_eq!(a[VERSION], "0.1.0", "{l}");
    }
    let config = content_json(&ctrd, m["config"]["digest"].as_str().unwrap());
    let diff_ids: Vec<&serde_json::Value> = config["rootfs"]["diff_ids"].as_array().unwrap().iter().collect();
    let digests: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
    assert_eq!(diff_ids, digests);
    assert_eq!(config["config"]["Cmd"][0], "/bin/sh", "the rest of the config is kept: {config}");
    let ls = ctrd.ctr(&["image", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with(&dst) && l.contains(&digest)), "{ls}");
    // the converted image shows the same files
    let want = run_container(&ctrd, &t.path().join("out"), &src, "src1", LOOK);
    assert!(want.contains(&big_sha) && want.contains("nogone\n"), "{want}");
    let got = run_container(&ctrd, &t.path().join("out"), &dst, "dst1", LOOK);
    assert_eq!(got, want);
    // converting again gives the same bytes
    let dst2 = format!("{}/test/bbconv:obd2", reg.host);
    let out2 = ctr_obd(&ctrd, &tmp, &["obdconv", "--vsize", "8", &src, &dst2]);
    assert!(out2.contains(&digest), "a second conversion differs: {out2} vs {digest}");
    drop(ctrd);
    drop(snap);
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let reg = Registry::start();
    let (plain, _) = busybox_image(&t.path().join("plain"));
    let src = reg.push(&plain.dir, "latest", "test/bbbad");
    let (obd, _) = busybox_overlaybd_image(&t.path().join("obd"), "obd");
    let obd_img = reg.push(&obd.dir, "obd", "test/bbobd");
    let snap = Snapshotter::start(t.path(), &insecure(&reg));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "ctrobd-bad");
    let nothing_left = |what: &str, images: &[&str]| {
        let mut names = image_names(&ctrd);
        names.sort();
        let mut want: Vec<String> = images.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(names, want, "image records after {what}");
        assert!(leases(&ctrd).is_empty(), "leases left after {what}: {:?}", leases(&ctrd));
        assert!(work_dirs(&tmp).is_empty(), "work directories left after {what}: {:?}", work_dirs(&tmp));
    };

    // rpull: an unreachable registry, a short reference, a missing tag, a missing socket
    // (a port bound here, on 127.0.0.1, asked on 127.0.0.2: nothing can answer there, not even a
    // registry of another test started meanwhile on a port that was free)
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("127.0.0.2:{}/test/x:1", held.local_addr().unwrap().port());
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "--plain-http", &gone]);
    assert!(e.contains(&format!("registry {gone}")) && e.to_lowercase().contains("connect"), "{e}");
    nothing_left("an unreachable registry", &[]);
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "busybox:latest"]);
    assert!(e.contains("\"busybox:latest\"") && e.contains("fully qualified"), "{e}");
    let missing = format!("{}/test/bbbad:nope", reg.host);
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "--plain-http", &missing]);
    assert!(e.contains(&format!("registry {missing}")) && e.contains("manifest"), "{e}");
    nothing_left("a missing tag", &[]);
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "--hosts-dir", "/etc/containerd/certs.d", &src]);
    assert!(e.contains("--hosts-dir"), "{e}");
    let o = output(std::process::Command::new(env!("CARGO_BIN_EXE_ctr-obd")).args([
        "-a",
        "/nonexistent/containerd.sock",
        "rpull",
        "--plain-http",
        &src,
    ]));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("/nonexistent/containerd.sock"), "{e}");
    // rpull into a snapshotter containerd does not have: the layer is named, nothing is recorded
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "--plain-http", "--snapshotter", "nosuch", &src]);
    assert!(e.contains("layer 0 (sha256:") && e.contains("snapshotter not loaded: nosuch"), "{e}");
    nothing_left("an unknown snapshotter", &[]);

    // obdconv: no such image, unsupported flags, an overlaybd image, a missing layer blob
    let e = ctr_obd_fails(&ctrd, &tmp, &["obdconv", "nosuch/image:1", "dst:1"]);
    assert!(e.contains("image nosuch/image:1 is not in containerd's namespace \"ctrobd-bad\""), "{e}");
    nothing_left("a missing source", &[]);
    let e = ctr_obd_fails(&ctrd, &tmp, &["obdconv", "--dbstr", "u:p@tcp(db:3306)/x", &src, "dst:1"]);
    assert!(e.contains("--dbstr"), "{e}");
    let e = ctr_obd_fails(&ctrd, &tmp, &["obdconv", "--fstype", "xfs", &src, "dst:1"]);
    assert!(e.contains("--fstype"), "{e}");
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &obd_img]);
    let e = ctr_obd_fails(&ctrd, &tmp, &["obdconv", &obd_img, "dst:1"]);
    assert!(e.contains("already an overlaybd image"), "{e}");
    nothing_left("converting an overlaybd image", &[&obd_img]);
    ctrd.ctr(&["image", "pull", "--plain-http", "--snapshotter", "overlaybd", &src]);
    let top = layout_layers(&plain.dir)[1].clone();
    ctrd.ctr(&["content", "rm", &top]);
    let e = ctr_obd_fails(&ctrd, &tmp, &["obdconv", &src, "dst:1"]);
    assert!(e.contains(&format!("layer 1 blob {top} is not in containerd's content store")), "{e}");
    assert!(e.contains("pulled lazily"), "{e}");
    nothing_left("a missing layer blob", &[&obd_img, &src]);
    // a conversion cut short by --timeout removes its work directory too
    ctrd.ctr(&["image", "rm", "--sync", &src]);
    ctrd.ctr(&["image", "pull", "--plain-http", "--snapshotter", "overlaybd", &src]);
    let e = ctr_obd_fails(&ctrd, &tmp, &["--timeout", "50ms", "obdconv", &src, "dst:1"]);
    assert!(e.contains("obdconv") && e.contains("not done within 50 ms"), "{e}");
    nothing_left("a timeout", &[&obd_img, &src]);
    // a layer blob the registry lost: the layer is named, its active snapshot removed
    let lost = OciLayout::new(&t.path().join("lost"));
    let layers = [lost.layer(&busybox_entries()), lost.layer(&[Entry::File("etc/lost", b"lost\n".to_vec(), 0o644)])];
    lost.finish(&layers, "latest", &["/bin/sh"]);
    let lost_img = reg.push(&lost.dir, "latest", "test/bblost");
    let lost_layer = layout_layers(&lost.dir)[1].clone();
    reg.delete_blob(&lost_layer);
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "--plain-http", &lost_img]);
    assert!(e.contains(&format!("layer 1 ({lost_layer})")) && e.contains("blob unknown"), "{e}");
    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(!snaps.contains("Active"), "the active snapshot is left: {snaps}");
    assert!(snaps.lines().all(|l| !l.contains(&lost_layer)), "{snaps}");
    nothing_left("a lost layer blob", &[&obd_img, &src]);
    drop(ctrd);
    drop(snap);
}

#[test]
fn rpull_from_a_registry_that_needs_a_password_uses_user() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let reg = Registry::start_with_auth("puller", "s3cret");
    let (layout, _) = busybox_overlaybd_image(&t.path().join("img"), "obd");
    let img = reg.push(&layout.dir, "obd", "test/bbauth");
    let snap = Snapshotter::start(t.path(), &insecure(&reg));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "ctrobd-auth");
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    assert!(e.contains(&format!("registry {img}")) && e.to_lowercase().contains("not authorized"), "{e}");
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "--plain-http", "-u", "puller:wrong", &img]);
    assert!(e.contains(&format!("registry {img}")), "{e}");
    let e = ctr_obd_fails(&ctrd, &tmp, &["rpull", "--plain-http", "-u", "puller", &img]);
    assert!(e.contains("user:password"), "{e}");
    assert!(image_names(&ctrd).is_empty() && leases(&ctrd).is_empty());
    let out = ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", "-u", "puller:s3cret", &img]);
    assert_eq!(out.lines().last(), Some("done"), "{out}");
    assert!(out.contains("committed by the snapshotter"), "{out}");
    assert_eq!(image_names(&ctrd), vec![img.clone()]);
    drop(ctrd);
    drop(snap);
}
