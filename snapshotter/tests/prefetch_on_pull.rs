//! End-to-end tests of the prefetch at pull (`prefetchOnPull`): an image with an acceleration
//! layer is rpulled (`ctr-obd`) through a TCP proxy in front of Debian's docker-registry, and the
//! snapshotter replays the layer's trace into its chunk cache as soon as the layer is committed,
//! with no container started. What must happen while a warm-up is under way (a cancel, a
//! container starting) happens while the proxy holds back the reads of the layer's blob, so
//! the warm-up cannot be over before it, however busy the machine. Needs the real parts (root, containerd, runc, docker-registry,
//! skopeo, FUSE) and this build's `overlaybd-snapshotter` and `ctr-obd`
//! (`cargo build --release -p overlaybd-snapshotter -p ctr-obd`).

#[allow(unused_imports)] // the shared helpers re-export what other tests use
mod common;

use std::path::Path;

use common::*;

const ACCEL: &str = "containerd.io/snapshot/overlaybd/acceleration-layer";
const BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
const BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
const VERSION: &str = "containerd.io/snapshot/overlaybd/version";

/// The test image, pushed to a registry.
struct AccelImage {
    /// The busybox overlaybd image plus its acceleration layer (`NAME:accel`).
    accel: String,
    /// The same image without the acceleration layer (`NAME:obd`).
    base: String,
    /// The digest of the overlaybd layer's blob.
    layer: String,
    /// The bytes the trace reads (of the layer's uncompressed view).
    traced: u64,
    /// The size of the layer's blob (compressed).
    blob_len: u64,
    /// The sha256 of `/etc/big`.
    big_sha: String,
}

impl AccelImage {
    /// The references through `proxy` (in front of the registry it was pushed to).
    fn via(&self, reg: &Registry, proxy: &Proxy) -> (String, String) {
        (self.accel.replacen(&reg.host, &proxy.host, 1), self.base.replacen(&reg.host, &proxy.host, 1))
    }
}

/// The busybox overlaybd image, pushed to `reg` as `name:obd`, and the same plus an
/// acceleration layer whose trace reads every mapped range of the image's layer, as
/// `name:accel`.
fn accel_image(dir: &Path, reg: &Registry, name: &str) -> AccelImage {
    let (layout, big_sha) = busybox_overlaybd_image(dir, "obd");
    let base = reg.push(&layout.dir, "obd", name);
    let blobs = layout.dir.join("blobs/sha256");
    let json = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blobs.join(d.trim_start_matches("sha256:"))).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.dir.join("index.json")).unwrap()).unwrap();
    let mut manifest = json(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = json(manifest["config"]["digest"].as_str().unwrap());
    let digest = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let layer = blobs.join(digest.trim_start_matches("sha256:"));

    // the trace: every data range of the layer, as a recording of a full read would hold
    let stack = backstore::Stack::open_files(&[&layer], None).unwrap();
    let records: Vec<backstore::trace::Record> = stack
        .merged_index()
        .segments()
        .iter()
        .filter(|s| !s.zeroed && s.length > 0)
        .map(|s| backstore::trace::Record::read(u32::from(s.tag), s.moffset * 512, u64::from(s.length) * 512))
        .collect();
    let traced: u64 = records.iter().map(|r| r.count).sum();
    let blob_len = std::fs::metadata(&layer).unwrap().len();
    let trace = backstore::trace::file::encode(&records);
    drop(stack);

    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o444);
    h.set_size(trace.len() as u64);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, "trace", trace.as_slice()).unwrap();
    let tar = b.into_inner().unwrap();
    let d = layout.blob(&tar);
    manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": d,
        "size": tar.len(),
        "annotations": { ACCEL: "yes", BLOB_DIGEST: d, BLOB_SIZE: tar.len().to_string(), VERSION: "0.1.0" },
    }));
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(serde_json::json!(d));
    let c = serde_json::to_vec(&config).unwrap();
    let cd = layout.blob(&c);
    manifest["config"]["digest"] = serde_json::json!(cd);
    manifest["config"]["size"] = serde_json::json!(c.len());
    layout.index(&serde_json::to_string(&manifest).unwrap(), "accel");
    let accel = reg.push(&layout.dir, "accel", name);
    AccelImage { accel, base, layer: digest, traced, blob_len, big_sha }
}

fn ctr_obd(c: &Containerd, tmp: &Path, args: &[&str]) -> String {
    std::fs::create_dir_all(tmp).unwrap();
    run(std::process::Command::new(workspace_bin("ctr-obd"))
        .arg("-a")
        .arg(&c.socket)
        .arg("-n")
        .arg(&c.namespace)
        .args(args)
        .env("TMPDIR", tmp)
        .env("RUST_LOG", "info"))
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The names of the threads of `pid` starting with `prefix`.
fn threads(pid: u32, prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    rd.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with(prefix))
        .collect()
}

/// Whether the warm-up's prefetch workers are running in `pid`.
fn warming(pid: u32) -> bool {
    !threads(pid, "obd-prefetch").is_empty()
}

/// Whether the warm-up and its workers are gone from `pid`.
fn warm_up_gone(pid: u32) -> bool {
    threads(pid, "obd-prefetch").is_empty() && threads(pid, "obd-warmup").is_empty()
}

/// The lines of `log` where a warm-up acknowledged that it was cancelled: from then on it
/// cannot finish (the line of the cancel itself, "...: the snapshot is removed", is written
/// before the warm-up sees it).
fn cancels_seen(log: &str) -> usize {
    complete_lines(log)
        .filter(|l| l.contains("prefetch at pull cancelled") && !l.contains("the snapshot is removed"))
        .count()
}

/// Pulls `base` (the image without its acceleration layer) and waits until the layer's
/// metadata is in the cache: a warm-up started afterwards opens the layer from there, and
/// asks the registry only for the data its trace reads.
fn pull_base_first(snap: &Snapshotter, ctrd: &Containerd, tmp: &Path, base: &str) {
    ctr_obd(ctrd, tmp, &["rpull", "--plain-http", base]);
    let done = snap.wait_for_log(&["layer metadata", "at pull"]);
    assert!(done.contains("layer metadata fetched at pull"), "{done}\n{}", snap.log_text());
}

/// With the layer's blob held back at `proxy`, waits until the warm-up's workers wait for it.
fn wait_for_held_warm_up(snap: &Snapshotter, proxy: &Proxy, pid: u32) {
    wait_for(
        120,
        || warming(pid) && proxy.held() > 0,
        || format!("no warm-up waits for the layer ({} requests held): {}", proxy.held(), snap.log_text()),
    );
}

#[test]
fn the_trace_is_prefetched_at_pull_and_the_container_runs_without_the_registry() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let cache = t.path().join("cache");
    let reg = Registry::start();
    let i = accel_image(&t.path().join("img"), &reg, "test/warm");
    let proxy = Proxy::start(&reg.host);
    let (img, _) = i.via(&reg, &proxy);
    let snap = Snapshotter::start(t.path(), &cache_toml(&cache));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obd-warm");
    let pid = snap.pid().expect("it runs");

    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    // no container: the warm-up alone fetches the traced ranges into the cache
    snap.wait_for_log(&["prefetch at pull finished"]);
    let log = snap.log_text();
    assert!(!log.contains("device attached"), "a device was attached: {log}");
    let cached_bytes = du(&cache);
    eprintln!(
        "traced {} bytes (a {}-byte blob); cache {cached_bytes} bytes; {} bytes through the proxy",
        i.traced,
        i.blob_len,
        proxy.bytes()
    );
    // the trace covers every data range: about the whole (compressed) blob is fetched and cached
    assert!(i.traced > 3_000_000 && i.blob_len > 3_000_000, "{} {}", i.traced, i.blob_len);
    assert!(
        cached_bytes >= i.blob_len * 9 / 10,
        "cache {cached_bytes} bytes after a prefetch of a {}-byte blob",
        i.blob_len
    );
    assert!(proxy.bytes() >= i.blob_len * 9 / 10, "{} bytes from the registry", proxy.bytes());
    // the remote layer's metadata (headers, jump table, index) was fetched at pull too, and is
    // in the cache as such
    let done = snap.wait_for_log(&["layer metadata", "at pull"]);
    assert!(done.contains("layer metadata fetched at pull"), "{done}\n{}", snap.log_text());
    let (meta, _) = cached(&cache, &i.layer);
    assert_eq!(meta.len(), 2, "a head and a tail range: {meta:?}");
    // the workers are gone once it finished
    wait_until("the warm-up threads to exit", 120, || warm_up_gone(pid));
    wait_until("the layer metadata threads to exit", 120, || threads(pid, "obd-layer-meta").is_empty());

    // with the registry gone, the container reads the traced file from the cache
    drop(proxy);
    drop(reg);
    ctrd.run_logged(
        &["--rm", "--snapshotter", "overlaybd", &img, "warm1", "/bin/sh", "-c", "sha256sum /etc/big"],
        &[&i.big_sha],
    );
    drop(ctrd);
    drop(snap);
}

#[test]
fn a_slow_prefetch_at_pull_is_cancelled_by_image_removal_and_by_sigterm() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let reg = Registry::start();
    let i = accel_image(&t.path().join("img"), &reg, "test/slow");
    let proxy = Proxy::start(&reg.host);
    let (img, base) = i.via(&reg, &proxy);
    let mut snap = Snapshotter::start(t.path(), &cache_toml(&t.path().join("cache")));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obd-slow");
    let pid = snap.pid().expect("it runs");
    let log_path = snap.log.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
    pull_base_first(&snap, &ctrd, &tmp, &base);

    // the registry does not answer for the layer's blob (a link that stalls) until the hold
    // ends: the warm-up's workers wait for their reads when the image is removed; once the
    // warm-up has seen the cancel (it cannot finish then), the held reads are refused so that
    // they end (cancelling waits for them) having cached nothing: the next warm-up has
    // everything to fetch again
    let hold = proxy.hold(&i.layer);
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    wait_for_held_warm_up(&snap, &proxy, pid);
    std::thread::scope(|s| {
        let rm = s.spawn(|| ctrd.ctr(&["image", "rm", "--sync", &img]));
        wait_for(120, || cancels_seen(&log()) >= 1, || format!("the removal did not cancel the warm-up: {}", log()));
        hold.refuse();
        rm.join().unwrap();
    });
    wait_for(120, || warm_up_gone(pid), || format!("the warm-up threads did not exit after the removal: {}", log()));
    assert!(!log().contains("prefetch at pull finished"), "{}", log());

    // again, then SIGTERM: the snapshotter stops the warm-up, joins it and exits
    let hold = proxy.hold(&i.layer);
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    wait_for_held_warm_up(&snap, &proxy, pid);
    let st = std::thread::scope(|s| {
        s.spawn(|| {
            wait_for(120, || cancels_seen(&log()) >= 2, || format!("SIGTERM did not cancel the warm-up: {}", log()));
            hold.refuse();
        });
        snap.stop(nix::sys::signal::Signal::SIGTERM).expect("it was running")
    });
    // (the process has exited: its log is complete)
    let log = snap.log_text();
    for l in log.lines().filter(|l| l.contains("prefetch at pull") || l.contains("SIGTERM")) {
        eprintln!("{l}");
    }
    assert!(st.success(), "{st}: {log}");
    assert_eq!(cancels_seen(&log), 2, "{log}");
    assert!(!log.contains("prefetch at pull finished"), "{log}");
    drop(ctrd);
    drop(proxy);
}

#[test]
fn a_container_started_during_the_warm_up_shares_its_fetches() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let reg = Registry::start();
    let i = accel_image(&t.path().join("img"), &reg, "test/share");
    let proxy = Proxy::start(&reg.host);
    let (img, base) = i.via(&reg, &proxy);
    let snap = Snapshotter::start(t.path(), &cache_toml(&t.path().join("cache")));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obd-share");
    let pid = snap.pid().expect("it runs");
    pull_base_first(&snap, &ctrd, &tmp, &base);
    let before = proxy.bytes();

    // the warm-up's reads wait (the layer's blob is held back) when the container starts: its
    // device opens (from the cached metadata), then the hold ends and both read on
    let hold = proxy.hold(&i.layer);
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    wait_for_held_warm_up(&snap, &proxy, pid);
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            let cmd = ["--rm", "--snapshotter", "overlaybd", &img, "share1", "/bin/sh", "-c", "sha256sum /etc/big"];
            ctrd.run_logged(&cmd, &[&i.big_sha])
        });
        snap.wait_for_log(&["device attached"]);
        drop(hold);
        run.join().unwrap()
    });
    snap.wait_for_log(&["prefetch at pull finished"]);
    // the device and the warm-up read through one cache: each chunk came from the registry once
    let fetched = proxy.bytes() - before;
    eprintln!("{fetched} bytes through the proxy for a {}-byte blob", i.blob_len);
    assert!(fetched < i.blob_len + i.blob_len / 5, "{fetched} bytes fetched for a {}-byte blob", i.blob_len);
    drop(ctrd);
    drop(snap);
}

#[test]
fn turned_off_nothing_is_prefetched_at_pull() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let cache = t.path().join("cache");
    let reg = Registry::start();
    let i = accel_image(&t.path().join("img"), &reg, "test/off");
    let proxy = Proxy::start(&reg.host);
    let (img, _) = i.via(&reg, &proxy);
    let mut snap = Snapshotter::start(t.path(), &format!("prefetchOnPull = false\n{}", cache_toml(&cache)));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obd-off");
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    // the pull is over (rpull returned; turned off, it leaves nothing running in the
    // background) and the snapshotter asked the registry for nothing of the layer (the proxy
    // records a request before forwarding it)
    let pid = snap.pid().expect("it runs");
    assert!(threads(pid, "obd-").is_empty(), "{:?}", threads(pid, "obd-"));
    assert_eq!(snapshotter_ranges(&proxy.requests(), &i.layer), vec![], "{:#?}", proxy.requests());
    assert!(du(&cache) < i.blob_len / 2, "cache {} bytes", du(&cache));
    assert_eq!(cached(&cache, &i.layer), (vec![], vec![]));
    // the device still replays the trace when the container starts
    ctrd.run_logged(
        &["--rm", "--snapshotter", "overlaybd", &img, "off1", "/bin/sh", "-c", "sha256sum /etc/big"],
        &[&i.big_sha],
    );
    drop(ctrd);
    // (the process has exited: its log is complete)
    snap.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(!snap.log_text().contains("prefetch at pull"), "{}", snap.log_text());
    assert!(!snap.log_text().contains("layer metadata"), "{}", snap.log_text());
}
