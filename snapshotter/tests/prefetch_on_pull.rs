//! End-to-end tests of the prefetch at pull (`prefetchOnPull`): an image with an acceleration
//! layer is rpulled (`ctr-obd`) through a TCP proxy in front of Debian's docker-registry, and the
//! snapshotter replays the layer's trace into its chunk cache as soon as the layer is committed,
//! with no container started. Needs the real parts (root, containerd, runc, docker-registry,
//! skopeo, FUSE) and this build's `overlaybd-snapshotter` and `ctr-obd`
//! (`cargo build --release -p overlaybd-snapshotter -p ctr-obd`).

#[allow(unused_imports)] // the shared helpers re-export what other tests use
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const ACCEL: &str = "containerd.io/snapshot/overlaybd/acceleration-layer";
const BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
const BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
const VERSION: &str = "containerd.io/snapshot/overlaybd/version";

/// A TCP proxy to `upstream` counting the bytes it sends back, optionally slowed down (a pause
/// after every 8 KiB sent back, per connection).
struct Proxy {
    host: String,
    down_bytes: Arc<AtomicU64>,
    pause_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
        let p = Proxy { host, down_bytes: Arc::default(), pause_ms: Arc::default(), stop: Arc::default() };
        let (down, pause, stop, up) = (p.down_bytes.clone(), p.pause_ms.clone(), p.stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for c in l.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = c else { continue };
                let Ok(server) = TcpStream::connect(&up) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c2, s2, None, None));
                let (down, pause) = (down.clone(), pause.clone());
                std::thread::spawn(move || pipe(server, client, Some(down), Some(pause)));
            }
        });
        p
    }

    fn bytes(&self) -> u64 {
        self.down_bytes.load(Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(&self.host);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>, pause: Option<Arc<AtomicU64>>) {
    let mut b = vec![0u8; 8192];
    loop {
        let n = match from.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&b[..n]).is_err() {
            break;
        }
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::AcqRel);
        }
        if let Some(p) = &pause {
            let ms = p.load(Ordering::Acquire);
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// The busybox overlaybd image plus an acceleration layer whose trace reads every mapped range
/// of the image's layer, pushed to `reg` as `name:accel`. The reference, the traced bytes (of
/// the layer's uncompressed view), the size of the layer's blob (compressed) and the sha256 of
/// `/etc/big`.
fn accel_image(dir: &Path, reg: &Registry, name: &str) -> (String, u64, u64, String) {
    let (layout, big_sha) = busybox_overlaybd_image(dir, "obd");
    let blobs = layout.dir.join("blobs/sha256");
    let json = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blobs.join(d.trim_start_matches("sha256:"))).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.dir.join("index.json")).unwrap()).unwrap();
    let mut manifest = json(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = json(manifest["config"]["digest"].as_str().unwrap());
    let layer = blobs.join(manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:"));

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
    let pushed = reg.push(&layout.dir, "accel", name);
    (pushed, traced, blob_len, big_sha)
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

/// The pid of the snapshotter serving `socket`.
fn snapshotter_pid(socket: &Path) -> u32 {
    let want = socket.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().is_some_and(|a| a.ends_with("overlaybd-snapshotter")) && args.contains(&want) {
            return pid;
        }
    }
    panic!("no snapshotter process serving {want}");
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

/// Metadata ranges kept in the cache (`meta-<offset>-<len>` files).
fn meta_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            n += meta_files(&e.path());
        } else if e.file_name().to_string_lossy().starts_with("meta-") {
            n += 1;
        }
    }
    n
}

fn config_toml(cache: &Path, extra: &str) -> String {
    format!("{extra}[backstore.cacheConfig]\ncacheType = \"file\"\ncacheDir = \"{}\"\n", cache.display())
}

#[test]
fn the_trace_is_prefetched_at_pull_and_the_container_runs_without_the_registry() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let cache: PathBuf = t.path().join("cache");
    let reg = Registry::start();
    let (pushed, traced, blob_len, big_sha) = accel_image(&t.path().join("img"), &reg, "test/warm");
    let proxy = Proxy::start(&reg.host);
    let img = pushed.replacen(&reg.host, &proxy.host, 1);
    let snap = Snapshotter::start(t.path(), &config_toml(&cache, ""));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obd-warm");

    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    // no container: the warm-up alone fetches the traced ranges into the cache
    wait_until("the prefetch at pull to finish", 120, || snap.log_text().contains("prefetch at pull finished"));
    let log = snap.log_text();
    assert!(!log.contains("device attached"), "a device was attached: {log}");
    let cached = du(&cache);
    eprintln!(
        "traced {traced} bytes (a {blob_len}-byte blob); cache {cached} bytes; {} bytes through the proxy",
        proxy.bytes()
    );
    // the trace covers every data range: about the whole (compressed) blob is fetched and cached
    assert!(traced > 3_000_000 && blob_len > 3_000_000, "{traced} {blob_len}");
    assert!(cached >= blob_len * 9 / 10, "cache {cached} bytes after a prefetch of a {blob_len}-byte blob");
    assert!(proxy.bytes() >= blob_len * 9 / 10, "{} bytes from the registry", proxy.bytes());
    // the remote layer's metadata (headers, jump table, index) was fetched at pull too, and is
    // in the cache as such
    wait_until("the layer metadata at pull", 60, || snap.log_text().contains("layer metadata fetched at pull"));
    assert_eq!(meta_files(&cache), 2, "a head and a tail range");
    // the workers are gone once it finished
    let pid = snapshotter_pid(&snap.socket);
    wait_until("the warm-up threads to exit", 30, || {
        threads(pid, "obd-prefetch").is_empty() && threads(pid, "obd-warmup").is_empty()
    });
    wait_until("the layer metadata threads to exit", 30, || threads(pid, "obd-layer-meta").is_empty());

    // with the registry gone, the container reads the traced file from the cache
    drop(proxy);
    drop(reg);
    let ran =
        ctrd.ctr(&["run", "--rm", "--snapshotter", "overlaybd", &img, "warm1", "/bin/sh", "-c", "sha256sum /etc/big"]);
    assert!(ran.contains(&big_sha), "{ran}\n{}", snap.log_text());
    drop(ctrd);
    drop(snap);
}

#[test]
fn a_slow_prefetch_at_pull_is_cancelled_by_image_removal_and_by_sigterm() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().join("tmp");
    let reg = Registry::start();
    let (pushed, _, _, _) = accel_image(&t.path().join("img"), &reg, "test/slow");
    let proxy = Proxy::start(&reg.host);
    let img = pushed.replacen(&reg.host, &proxy.host, 1);
    let mut snap = Snapshotter::start(t.path(), &config_toml(&t.path().join("cache"), ""));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obd-slow");
    let pid = snapshotter_pid(&snap.socket);
    // its prefetch workers are reading
    let warming = || !threads(pid, "obd-prefetch").is_empty();
    let gone = || threads(pid, "obd-prefetch").is_empty() && threads(pid, "obd-warmup").is_empty();
    let log_path = snap.log.clone();
    let log_has = move |what: &str| std::fs::read_to_string(&log_path).unwrap_or_default().contains(what);

    // a slow link (80 KiB a second per connection): the warm-up's workers are reading when the
    // image is removed; once the removal has cancelled it, the link is made fast so that the
    // reads in flight end (cancelling waits for them)
    proxy.pause_ms.store(100, Ordering::Release);
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    wait_until("the prefetch at pull to start", 60, warming);
    std::thread::scope(|s| {
        let rm = s.spawn(|| ctrd.ctr(&["image", "rm", "--sync", &img]));
        wait_until("the removal to cancel the warm-up", 120, || log_has("the snapshot is removed"));
        proxy.pause_ms.store(0, Ordering::Release);
        rm.join().unwrap();
    });
    wait_until("the warm-up threads to exit after the removal", 60, gone);
    assert!(!log_has("prefetch at pull finished"), "{}", snap.log_text());

    // again, then SIGTERM: the snapshotter stops the warm-up, joins it and exits
    proxy.pause_ms.store(100, Ordering::Release);
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    wait_until("the second prefetch at pull to start", 60, warming);
    let st = std::thread::scope(|s| {
        s.spawn(|| {
            wait_until("the snapshotter to get SIGTERM", 60, || log_has("SIGTERM"));
            proxy.pause_ms.store(0, Ordering::Release);
        });
        snap.stop(nix::sys::signal::Signal::SIGTERM).expect("it was running")
    });
    let log = snap.log_text();
    for l in log.lines().filter(|l| l.contains("prefetch at pull") || l.contains("SIGTERM")) {
        eprintln!("{l}");
    }
    assert!(st.success(), "{st}: {log}");
    assert!(log.matches("prefetch at pull cancelled").count() >= 2, "{log}");
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
    let (pushed, _, blob_len, big_sha) = accel_image(&t.path().join("img"), &reg, "test/share");
    let proxy = Proxy::start(&reg.host);
    let img = pushed.replacen(&reg.host, &proxy.host, 1);
    let snap = Snapshotter::start(t.path(), &config_toml(&t.path().join("cache"), ""));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obd-share");
    let pid = snapshotter_pid(&snap.socket);

    // a slowish link, so that the container's reads meet the warm-up's
    proxy.pause_ms.store(20, Ordering::Release);
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    wait_until("the prefetch at pull to start", 60, || !threads(pid, "obd-warmup").is_empty());
    let ran =
        ctrd.ctr(&["run", "--rm", "--snapshotter", "overlaybd", &img, "share1", "/bin/sh", "-c", "sha256sum /etc/big"]);
    assert!(ran.contains(&big_sha), "{ran}\n{}", snap.log_text());
    wait_until("the prefetch at pull to end", 120, || snap.log_text().contains("prefetch at pull finished"));
    // the device and the warm-up read through one cache: each chunk came from the registry once
    let fetched = proxy.bytes();
    eprintln!("{fetched} bytes through the proxy for a {blob_len}-byte blob");
    assert!(fetched < blob_len + blob_len / 5, "{fetched} bytes fetched for a {blob_len}-byte blob");
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
    let (img, _, blob_len, big_sha) = accel_image(&t.path().join("img"), &reg, "test/off");
    let snap = Snapshotter::start(t.path(), &config_toml(&cache, "prefetchOnPull = false\n"));
    let ctrd = Containerd::start_with_gc_on_request(t.path(), &snap.socket, "obd-off");
    ctr_obd(&ctrd, &tmp, &["rpull", "--plain-http", &img]);
    let pid = snapshotter_pid(&snap.socket);
    assert!(threads(pid, "obd-").is_empty(), "{:?}", threads(pid, "obd-"));
    assert!(du(&cache) < blob_len / 2, "cache {} bytes", du(&cache));
    assert_eq!(meta_files(&cache), 0);
    // the device still replays the trace when the container starts
    let ran =
        ctrd.ctr(&["run", "--rm", "--snapshotter", "overlaybd", &img, "off1", "/bin/sh", "-c", "sha256sum /etc/big"]);
    assert!(ran.contains(&big_sha), "{ran}");
    assert!(!snap.log_text().contains("prefetch at pull"), "{}", snap.log_text());
    assert!(!snap.log_text().contains("layer metadata"), "{}", snap.log_text());
    drop(ctrd);
    drop(snap);
}
