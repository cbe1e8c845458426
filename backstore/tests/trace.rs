//! Trace record and replay (`recordTracePath`, acceleration layers) over real layers made by
//! the repository's tools and served by a real registry (Debian's docker-registry) behind the
//! counting, fault-injecting proxy.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backstore::device::{open_device, LayerSource, LocalSource};
use backstore::remote::source::RemoteSource;
use backstore::trace::{file, Record};
use backstore::{BlockDevice, Stack};
use common::proxy::{Fault, Proxy};
use common::registry::Registry;
use common::*;

/// Prefetch threads are counted per process: the tests that start prefetches run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The common generator with the seed spread over all bits first.
fn random(len: usize, seed: u64) -> Vec<u8> {
    common::random(len, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// An OCI layer tar of `files` (path, bytes).
fn layer_tar(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(1);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Applies `tar` over `lowers` into a new layer and commits it (ZFile, tar-wrapped).
fn build_layer(dir: &Path, n: usize, tar: &[u8], lowers: &[PathBuf]) -> PathBuf {
    let (data, index) = (dir.join(format!("data{n}")), dir.join(format!("index{n}")));
    let mut c = Command::new(bin("overlaybd-create"));
    c.arg("-s").arg(&data).arg(&index).arg(if lowers.is_empty() { "1" } else { "0" });
    if lowers.is_empty() {
        c.arg("--mkfs");
    }
    run(&mut c);
    let cfg = dir.join(format!("build{n}.json"));
    let lj: Vec<String> = lowers.iter().map(|l| format!(r#"{{"file":"{}"}}"#, l.display())).collect();
    std::fs::write(
        &cfg,
        format!(
            r#"{{"lowers":[{}],"upper":{{"data":"{}","index":"{}"}}}}"#,
            lj.join(","),
            data.display(),
            index.display()
        ),
    )
    .unwrap();
    let tar_path = dir.join(format!("layer{n}.src.tar"));
    std::fs::write(&tar_path, tar).unwrap();
    run(Command::new(bin("overlaybd-apply")).arg(&tar_path).arg(&cfg));
    let out = dir.join(format!("layer{n}.tar"));
    let mut commit = Command::new(bin("overlaybd-commit"));
    commit.args(["-z", "-t", "--uuid", &format!("00000000-0000-0000-0000-00000000000{n}")]);
    if n > 0 {
        commit.args(["--parent-uuid", &format!("00000000-0000-0000-0000-00000000000{}", n - 1)]);
    }
    run(commit.arg(&data).arg(&index).arg(&out));
    out
}

/// Two layers of incompressible files (about 3 MiB each, the second overwriting a file of the
/// first), built once per test.
fn two_layers(dir: &Path) -> Vec<PathBuf> {
    let l0: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("base/f{i}"), random(500_000 + i * 7_000, i as u64))).collect();
    let l1: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("app/g{i}"), random(600_000 + i * 5_000, 100 + i as u64)))
        .chain([("base/f2".to_string(), random(300_000, 999))])
        .collect();
    fn as_ref(v: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
        v.iter().map(|(p, d)| (p.as_str(), d.clone())).collect()
    }
    let a = build_layer(dir, 0, &layer_tar(&as_ref(&l0)), &[]);
    let b = build_layer(dir, 1, &layer_tar(&as_ref(&l1)), std::slice::from_ref(&a));
    vec![a, b]
}

/// The layers of [`two_layers`] in a registry, read through a counting proxy.
struct Remote {
    _reg: Registry,
    proxy: Proxy,
    layers: Vec<(String, u64)>,
    dir: tempfile::TempDir,
}

impl Remote {
    fn start() -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let files = two_layers(dir.path());
        let reg = Registry::start();
        let layers = files
            .iter()
            .map(|f| {
                let b = std::fs::read(f).unwrap();
                (reg.push_blob("app/trace", &b), b.len() as u64)
            })
            .collect();
        let proxy = Proxy::start(reg.base.trim_start_matches("http://"));
        Remote { _reg: reg, proxy, layers, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config of the remote layers (with an empty download `dir` each) and `extra` keys.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let lowers: Vec<String> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, (d, s))| {
                let dir = self.path(&format!("{name}-lower{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                format!(r#"{{"digest":"{d}","size":{s},"dir":"{}"}}"#, dir.display())
            })
            .collect();
        let cfg = self.path(&format!("{name}.json"));
        std::fs::write(
            &cfg,
            format!(
                r#"{{"repoBlobUrl":"{}/v2/app/trace/blobs","lowers":[{}]{extra}}}"#,
                self.proxy.base,
                lowers.join(",")
            ),
        )
        .unwrap();
        cfg
    }

    /// A remote source with a cache of its own (`cache` names it) and `concurrency` workers.
    fn source(&self, cache: &str, concurrency: usize) -> RemoteSource {
        let g: config::GlobalConfig = serde_json::from_str(&format!(
            r#"{{"cacheConfig":{{"cacheType":"file","cacheDir":"{}","cacheSizeGB":1}},
                "credentialConfig":{{"mode":"file","path":""}},"prefetchConfig":{{"concurrency":{concurrency}}}}}"#,
            self.path(cache).display()
        ))
        .unwrap();
        RemoteSource::from_global(&g).unwrap()
    }
}

/// The reads of a cold start: slices of mapped ranges of the device (some twice), in a fixed
/// order.
fn workload(stack: &Stack) -> Vec<(u64, usize)> {
    let segs: Vec<_> = stack.merged_index().segments().iter().filter(|s| !s.zeroed).copied().collect();
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let (start, end) = (s.offset * 512, s.end() * 512);
        let mut off = start;
        let mut k = 0;
        while off < end {
            let want: u64 = if (i + k) % 3 == 0 { 96 << 10 } else { 12 << 10 };
            out.push((off, want.min(end - off) as usize));
            off += 320 << 10;
            k += 1;
        }
    }
    let again: Vec<_> = out.iter().step_by(4).copied().collect();
    out.extend(again);
    out
}

fn read_all(stack: &Stack, reads: &[(u64, usize)]) -> Vec<Vec<u8>> {
    reads
        .iter()
        .map(|&(off, len)| {
            let mut b = vec![0u8; len];
            stack.read_at(&mut b, off).unwrap_or_else(|e| panic!("read {len} at {off}: {e}"));
            b
        })
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

fn sibling(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

/// Mapped (moffset, length) sectors of a layer blob, by the independent reader.
fn inspect_mapped(blob: &Path) -> Vec<(u64, u64)> {
    run(inspect().arg("index").arg(blob))
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l.split('\t').map(|x| x.parse().unwrap()).collect();
            (f[3] == 0).then_some((f[2], f[1]))
        })
        .collect()
}

#[test]
fn a_recorded_trace_replays_into_the_cache_before_the_reads() {
    let _s = serial();
    let r = Remote::start();
    let trace = r.path("trace");
    std::fs::write(&trace, b"").unwrap();

    // record: the reads of a cold start, dumped when the device closes
    let cfg = r.config("rec", &format!(r#","recordTracePath":"{}""#, trace.display()));
    let stack = open_device(&cfg, &r.source("cache-rec", 16)).unwrap();
    assert!(sibling(&trace, ".lock").exists(), "no lock file while recording");
    assert!(stack.prefetch_stats().is_none());
    let reads = workload(&stack);
    assert!(reads.len() > 10, "{reads:?}");
    let expected = read_all(&stack, &reads);
    assert!(!stack.recorder().unwrap().is_empty());
    assert!(!sibling(&trace, ".ok").exists(), "dumped before the device closed");
    drop(stack);
    assert!(sibling(&trace, ".ok").exists(), "no .ok after the device closed");
    std::fs::remove_file(sibling(&trace, ".lock")).unwrap();
    let records = file::decode(&std::fs::read(&trace).unwrap()).unwrap();
    assert!(records.len() > 10 && records.iter().all(|r| r.op == b'R'));
    assert!(records.iter().any(|r| r.layer == 0) && records.iter().any(|r| r.layer == 1));
    let mut uniq = records.clone();
    uniq.sort_by_key(|r| (r.layer, r.offset, r.count));
    uniq.dedup();
    assert_eq!(uniq.len(), records.len(), "repeated reads recorded twice");
    assert_eq!(file::encode(&records), std::fs::read(&trace).unwrap(), "the format does not round-trip");
    // every record lies in a mapping of its layer, as the independent reader lists them
    // (obd_inspect.py has no trace command: the file itself is checked by the format tests)
    let blobs = [r.path("layer0.tar"), r.path("layer1.tar")];
    let mapped: Vec<Vec<(u64, u64)>> = blobs.iter().map(|b| inspect_mapped(b)).collect();
    for rec in &records {
        let (s, e) = (rec.offset / 512, (rec.offset + rec.count) / 512);
        assert!(
            mapped[rec.layer as usize].iter().any(|&(m, l)| m <= s && e <= m + l),
            "{rec:?} is not inside a mapping of layer {}",
            rec.layer
        );
    }

    // the same reads without any trace give the same bytes
    let plain = open_device(&r.config("plain", ""), &r.source("cache-plain", 16)).unwrap();
    assert!(read_all(&plain, &reads) == expected, "reads differ between two plain opens");
    drop(plain);

    // replay into a cold cache: the prefetch fetches every traced range...
    let before = r.proxy.seen().len();
    let cfg = r.config("replay", &format!(r#","recordTracePath":"{}""#, trace.display()));
    let stack = open_device(&cfg, &r.source("cache-replay", 4)).unwrap();
    let progress = stack.prefetch_progress().expect("no prefetch started");
    assert!(progress.wait_finished(Duration::from_secs(120)), "the prefetch did not finish");
    let st = stack.prefetch_stats().unwrap();
    assert_eq!(
        (st.records_done, st.records_total, st.reads_failed, st.cancelled),
        (records.len(), records.len(), 0, false)
    );
    assert!(st.reads_done < records.len(), "adjacent records were not coalesced: {st:?}");
    assert!(r.proxy.seen().len() > before, "the prefetch fetched nothing");
    assert!(!sibling(&trace, ".lock").exists(), "replay started a recording");
    // ...so that with the registry gone every read of the cold start is served from the cache
    r.proxy.always(Some(Fault::Status(404)));
    let got = read_all(&stack, &reads);
    r.proxy.always(None);
    assert!(got == expected, "replayed reads differ from the recorded ones");
    drop(stack);
    assert!(file::decode(&std::fs::read(&trace).unwrap()).unwrap() == records, "replay changed the trace");
}

/// Captures the log lines of `f` (on this thread).
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false).finish();
    let out = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).to_string();
    (out, text)
}

#[test]
fn unusable_traces_are_refused_and_the_device_reads_as_without() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let layers = two_layers(p);
    let config = |name: &str, trace: &Path| {
        let lj: Vec<String> = layers.iter().map(|l| format!(r#"{{"file":"{}"}}"#, l.display())).collect();
        let cfg = p.join(format!("{name}.json"));
        std::fs::write(&cfg, format!(r#"{{"lowers":[{}],"recordTracePath":"{}"}}"#, lj.join(","), trace.display()))
            .unwrap();
        cfg
    };
    let plain = Stack::open_files(&layers, None).unwrap();
    let reads = workload(&plain);
    let expected = read_all(&plain, &reads);
    let data_end: Vec<u64> = plain.lowers().iter().map(|l| l.trailer().index_offset).collect();
    drop(plain);

    let good = vec![Record::read(0, 8192, 4096), Record::read(1, 4096, 65536)];
    let bytes = file::encode(&good);
    let mut flipped = bytes.clone();
    flipped[24 + 30] ^= 0x10;
    let mut bad_magic = bytes.clone();
    bad_magic[0] ^= 0xff;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("flipped", flipped, "checksum mismatch"),
        ("truncated", bytes[..bytes.len() - 7].to_vec(), "truncated"),
        ("badmagic", bad_magic, "not a trace"),
        ("layer", file::encode(&[Record::read(0, 8192, 4096), Record::read(5, 8192, 4096)]), "names layer 5"),
        ("outside", file::encode(&[Record::read(1, data_end[1] - 512, 4096)]), "outside its data area"),
        ("header", file::encode(&[Record::read(0, 0, 4096)]), "outside its data area"),
    ];
    for (name, content, reason) in cases {
        let trace = p.join(format!("{name}.trace"));
        std::fs::write(&trace, &content).unwrap();
        let (stack, log) = logged(|| open_device(&config(name, &trace), &LocalSource));
        let stack = stack.unwrap_or_else(|e| panic!("{name}: the device did not open: {e}"));
        let warn: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warn.len(), 1, "{name}: one warning expected:\n{log}");
        assert!(warn[0].contains(trace.to_str().unwrap()) && warn[0].contains(reason), "{name}: {log}");
        assert!(stack.prefetch_stats().is_none(), "{name}: a prefetch started");
        assert!(read_all(&stack, &reads) == expected, "{name}: reads differ");
        assert_eq!(std::fs::read(&trace).unwrap(), content, "{name}: the trace was changed");
    }
    // the good trace replays (from local files)
    let trace = p.join("good.trace");
    std::fs::write(&trace, &bytes).unwrap();
    let stack = open_device(&config("good", &trace), &LocalSource).unwrap();
    assert!(stack.prefetch_progress().unwrap().wait_finished(Duration::from_secs(60)));
    assert_eq!(stack.prefetch_stats().unwrap().records_done, 2);
    assert!(read_all(&stack, &reads) == expected);
}

const CHILD_ENV: &str = "OBD_TRACE_TEST_CHILD";

/// Not a test on its own: run by the SIGKILL test in a child process (with CHILD_ENV set to
/// `CONFIG:READY_FILE`), it records until killed.
#[test]
fn child_records_until_killed() {
    let Ok(arg) = std::env::var(CHILD_ENV) else { return };
    let (cfg, ready) = arg.split_once(':').unwrap();
    let stack = open_device(Path::new(cfg), &LocalSource).unwrap();
    let reads = workload(&stack);
    read_all(&stack, &reads);
    std::fs::write(ready, b"").unwrap();
    loop {
        read_all(&stack, &reads);
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_recording_killed_with_sigkill_leaves_no_ok_and_no_half_written_trace() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let layers = two_layers(p);
    let trace = p.join("trace");
    std::fs::write(&trace, b"").unwrap();
    let lj: Vec<String> = layers.iter().map(|l| format!(r#"{{"file":"{}"}}"#, l.display())).collect();
    let cfg = p.join("config.json");
    std::fs::write(&cfg, format!(r#"{{"lowers":[{}],"recordTracePath":"{}"}}"#, lj.join(","), trace.display()))
        .unwrap();
    let spawn = |ready: &Path| {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_records_until_killed", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, format!("{}:{}", cfg.display(), ready.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // killed while recording: the empty trace stays, no .ok
    let ready = p.join("ready1");
    let mut child = spawn(&ready);
    wait_for("the child to record", || ready.exists());
    assert!(sibling(&trace, ".lock").exists());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!sibling(&trace, ".ok").exists(), "a killed recording left .ok");
    assert_eq!(std::fs::metadata(&trace).unwrap().len(), 0, "a killed recording touched the trace");

    // killed right after the lock is removed (the dump may be under way): whatever the timing,
    // the trace is the empty original or complete, and .ok only comes with a complete one
    let ready = p.join("ready2");
    let mut child = spawn(&ready);
    wait_for("the child to record again", || ready.exists());
    std::fs::remove_file(sibling(&trace, ".lock")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    child.kill().unwrap();
    child.wait().unwrap();
    let bytes = std::fs::read(&trace).unwrap();
    let complete = !bytes.is_empty() && file::decode(&bytes).is_ok_and(|r| !r.is_empty());
    assert!(bytes.is_empty() || complete, "a half-written trace");
    if sibling(&trace, ".ok").exists() {
        assert!(complete, ".ok without a complete trace");
    }

    // a clean close dumps the trace and creates .ok
    if bytes.is_empty() {
        let ready = p.join("ready3");
        let mut child = spawn(&ready);
        wait_for("the child to record a third time", || ready.exists());
        std::fs::remove_file(sibling(&trace, ".lock")).unwrap();
        wait_for("the dump after the lock was removed", || sibling(&trace, ".ok").exists());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(file::decode(&std::fs::read(&trace).unwrap()).is_ok_and(|r| !r.is_empty()));
    }
}

/// The prefetch threads of this process, by name. A thread shows here a little longer than it
/// runs: a join returns once it has run to its end, before the kernel has done with it.
fn prefetch_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with(backstore::trace::prefetch::THREAD_PREFIX))
        .collect()
}

#[test]
fn dropping_the_stack_stops_a_slow_prefetch_and_joins_its_workers() {
    let _s = serial();
    let r = Remote::start();
    // a trace touching every 64 KiB of both layers, over and over: far more than its workers
    // read before the device is closed
    let cfg0 = r.config("probe", "");
    let probe = open_device(&cfg0, &r.source("cache-probe", 1)).unwrap();
    let mut records = Vec::new();
    for round in 0..4u64 {
        for (i, l) in probe.lowers().iter().enumerate() {
            let end = l.trailer().index_offset;
            let mut off = 4096 + round * 4096;
            while off + 4096 <= end {
                records.push(Record::read(i as u32, off, 4096));
                off += 64 << 10;
            }
        }
    }
    drop(probe);
    let trace = r.path("big.trace");
    std::fs::write(&trace, file::encode(&records)).unwrap();
    // the registry stalls: every blob request waits at the proxy (the device opens from the
    // metadata the probe left in the cache, without a request)
    r.proxy.hold_from(Some(0));
    let cfg = r.config("slow", &format!(r#","recordTracePath":"{}""#, trace.display()));
    let stack = open_device(&cfg, &r.source("cache-probe", 2)).unwrap();
    let progress = stack.prefetch_progress().expect("no prefetch");
    wait_for("a prefetch read to wait for the registry", || r.proxy.held() >= 1);
    assert!(!prefetch_threads().is_empty(), "no prefetch threads while prefetching");
    // an on-demand read in flight (as far as the workers know): once the registry answers, each
    // worker ends the read it is in and waits before the next
    let gate = stack.gate();
    let on_demand = gate.enter();
    r.proxy.hold_from(None);
    drop(stack);
    drop(on_demand);
    let st = progress.stats();
    assert!(st.cancelled && st.finished, "{st:?}");
    assert!(st.records_done < st.records_total, "the whole trace was read before the drop: {st:?}");
    // (joined: gone from the thread list a moment after)
    wait_for("the prefetch threads to leave the thread list", || prefetch_threads().is_empty());
}

#[test]
fn the_concurrency_comes_from_the_global_config() {
    let r = RemoteSource::from_global(
        &serde_json::from_str(r#"{"prefetchConfig":{"concurrency":3},"credentialConfig":{"mode":"file","path":""},"cacheConfig":{"cacheType":"none"}}"#)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.prefetch_concurrency(), 3);
    assert_eq!(LocalSource.prefetch_concurrency(), 16);
}

/// The bytes of `path` in the ext4 of `stack`, read through the device.
fn file_bytes(stack: Arc<Stack>, path: &str, len: usize) -> Vec<u8> {
    let disk = Arc::new(backstore::apply::disk::StackDisk(stack.clone()));
    let fs = ext2fs::Filesystem::open_read_only(disk).unwrap();
    let ino = fs.namei(path).unwrap().unwrap_or_else(|| panic!("{path} not found"));
    let bs = fs.block_size() as u64;
    let mut out = Vec::new();
    for e in fs.data_extents(ino).unwrap() {
        let mut b = vec![0u8; (e.count * bs) as usize];
        stack.read_at(&mut b, e.physical * bs).unwrap();
        out.extend_from_slice(&b);
    }
    out.truncate(len);
    out
}

#[test]
fn a_priority_list_prefetches_the_files_it_names() {
    let _s = serial();
    let r = Remote::start();
    let list = r.path("list");
    std::fs::write(&list, "/base/f1\n/nowhere/x\n\n/app/g3\n").unwrap();
    let cfg = r.config("list", &format!(r#","recordTracePath":"{}""#, list.display()));
    // (the paths are resolved on the prefetch's thread, which logs to the opener's subscriber)
    let (stack, log) = logged(|| {
        let stack = open_device(&cfg, &r.source("cache-list", 4)).unwrap();
        assert!(stack.prefetch_progress().expect("no prefetch").wait_finished(Duration::from_secs(120)));
        stack
    });
    assert!(log.contains("/nowhere/x") && log.contains("not in the image"), "{log}");
    let progress = stack.prefetch_progress().unwrap();
    let st = progress.stats();
    assert!(st.records_done == st.records_total && st.records_total > 0 && st.reads_failed == 0, "{st:?}");
    // about the two files' sizes: their blocks and no more than a few chunks' worth of others
    assert!(st.bytes >= 507_000 + 615_000, "{st:?}");
    // with the registry gone, both files read back whole from the cache
    r.proxy.always(Some(Fault::Status(404)));
    let stack = Arc::new(stack);
    let f1 = file_bytes(stack.clone(), "/base/f1", 507_000);
    let g3 = file_bytes(stack.clone(), "/app/g3", 615_000);
    r.proxy.always(None);
    assert!(f1 == random(507_000, 1), "/base/f1 differs");
    assert!(g3 == random(615_000, 103), "/app/g3 differs");
    assert_eq!(std::fs::read_to_string(&list).unwrap(), "/base/f1\n/nowhere/x\n\n/app/g3\n");
}

#[test]
fn an_acceleration_layer_is_not_a_layer_and_its_trace_is_replayed() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let layers = two_layers(p);
    let accel = p.join("accel/fs");
    std::fs::create_dir_all(&accel).unwrap();
    let cfg = p.join("config.json");
    let lj: Vec<String> = layers.iter().map(|l| format!(r#"{{"file":"{}"}}"#, l.display())).collect();
    let write_cfg = |extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                r#"{{"lowers":[{},{{"dir":"{}"}}],"accelerationLayer":true{extra}}}"#,
                lj.join(","),
                accel.display()
            ),
        )
        .unwrap()
    };
    let plain = Stack::open_files(&layers, None).unwrap();
    let reads = workload(&plain);
    let expected = read_all(&plain, &reads);
    drop(plain);

    // no trace in the acceleration layer: two layers, no prefetch
    write_cfg("");
    let stack = open_device(&cfg, &LocalSource).unwrap();
    assert_eq!(stack.lowers().len(), 2);
    assert!(stack.prefetch_stats().is_none());
    assert!(read_all(&stack, &reads) == expected);
    drop(stack);

    // a trace: replayed
    std::fs::write(accel.join("trace"), file::encode(&[Record::read(1, 4096, 8192), Record::read(0, 8192, 4096)]))
        .unwrap();
    let stack = open_device(&cfg, &LocalSource).unwrap();
    assert_eq!(stack.lowers().len(), 2);
    assert!(stack.prefetch_progress().unwrap().wait_finished(Duration::from_secs(60)));
    assert_eq!(stack.prefetch_stats().unwrap().records_done, 2);
    assert!(read_all(&stack, &reads) == expected);
    drop(stack);

    // a priority list: resolved and prefetched
    std::fs::write(accel.join("trace"), "/app/g0\n").unwrap();
    let stack = open_device(&cfg, &LocalSource).unwrap();
    assert!(stack.prefetch_progress().unwrap().wait_finished(Duration::from_secs(60)));
    assert!(stack.prefetch_stats().unwrap().bytes >= 600_000);
    drop(stack);

    // an empty trace file is not a recording here
    std::fs::write(accel.join("trace"), b"").unwrap();
    let stack = open_device(&cfg, &LocalSource).unwrap();
    assert!(stack.recorder().is_none() && stack.prefetch_stats().is_none());
    assert!(!sibling(&accel.join("trace"), ".lock").exists());
    drop(stack);

    // with recordTracePath too: refused
    write_cfg(&format!(r#","recordTracePath":"{}""#, p.join("t").display()));
    let e = open_device(&cfg, &LocalSource).err().expect("accelerationLayer with recordTracePath opened");
    assert!(e.to_string().contains("cannot be combined"), "{e}");
}
