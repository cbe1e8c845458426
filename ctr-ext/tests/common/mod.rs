//! `ctr-obd`'s own end-to-end helpers: runs of this package's binary against a test's
//! containerd, and waiting for what the daemons do in the background. The real parts (registry,
//! OCI layouts and busybox images, the snapshotter and containerd processes) are
//! `overlaybd_integration`'s fixtures, re-exported here.

#![allow(dead_code)] // each test binary uses a part

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub use overlaybd_integration::fixtures::*;

/// How long a test waits for something the daemons do in the background (generous: it only
/// costs time when the thing never happens).
pub const WAIT_S: u64 = 120;

/// `ctr-obd -a SOCK -n NS ARGS...` with `TMPDIR` = `tmp`, to run.
pub fn ctr_obd_command(c: &Containerd, tmp: &Path, args: &[&str]) -> Command {
    std::fs::create_dir_all(tmp).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctr-obd"));
    cmd.arg("-a").arg(&c.socket).arg("-n").arg(&c.namespace).args(args).env("TMPDIR", tmp).env("RUST_LOG", "info");
    cmd
}

/// `ctr-obd` that must succeed: its stdout.
pub fn ctr_obd(c: &Containerd, tmp: &Path, args: &[&str]) -> String {
    run(&mut ctr_obd_command(c, tmp, args))
}

/// `ctr-obd` that must fail: its stderr.
pub fn ctr_obd_fails(c: &Containerd, tmp: &Path, args: &[&str]) -> String {
    let o = output(&mut ctr_obd_command(c, tmp, args));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "ctr-obd {args:?} succeeded: {}\n{err}", String::from_utf8_lossy(&o.stdout));
    eprintln!("ctr-obd {args:?} failed as expected:\n{err}");
    err
}

/// `ctr run --rm --snapshotter overlaybd IMAGE NAME /bin/sh -c SCRIPT`, which must succeed;
/// what the script wrote (stdout and stderr). The script writes into a file of a directory
/// under `out_dir` bind-mounted into the container, read once `ctr` has returned: `ctr run`
/// relays a container's output itself, and on a loaded machine it sometimes passes nothing on
/// (a container that exits at once, status 0).
pub fn run_container(c: &Containerd, out_dir: &Path, image: &str, name: &str, script: &str) -> String {
    let dir = out_dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mount = format!("type=bind,src={},dst=/ctr-obd-test-out,options=rbind:rw", dir.display());
    let wrapped = format!("({script}) >/ctr-obd-test-out/output 2>&1");
    c.ctr(&["run", "--rm", "--snapshotter", "overlaybd", "--mount", &mount, image, name, "/bin/sh", "-c", &wrapped]);
    let file = dir.join("output");
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("container {name}'s output {}: {e}", file.display()))
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `secs` seconds; then panics naming
/// `what` and showing `state()` (what was seen last).
pub fn wait_for_some<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>, state: impl Fn() -> String) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what} did not happen within {secs} s: {}", state());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a log line of the snapshotter (tracing's format: `... message key=value ...`) has
/// the field `key` = `value`.
pub fn has_field(line: &str, key: &str, value: &str) -> bool {
    let want = format!("{key}={value}");
    line.split_whitespace().any(|t| t == want)
}

/// The snapshotter's log from byte `from` on (complete lines only: the daemon may be writing
/// the last one).
pub fn snapshotter_log_from(snap: &Snapshotter, from: usize) -> String {
    let text = snap.log_text();
    let rest = text.get(from..).unwrap_or_default();
    match rest.rfind('\n') {
        Some(i) => rest[..=i].to_string(),
        None => String::new(),
    }
}

/// Waits until the snapshotter has logged, after byte `from` of its log, a line containing
/// `message` with every field of `fields` (the daemon logs what its threads do when they do it,
/// not when the request that set them off returns); that line.
pub fn wait_for_snapshotter_line(snap: &Snapshotter, from: usize, message: &str, fields: &[(&str, &str)]) -> String {
    let matching = |log: &str| -> Option<String> {
        log.lines().find(|l| l.contains(message) && fields.iter().all(|(k, v)| has_field(l, k, v))).map(str::to_string)
    };
    wait_for_some(
        &format!("the snapshotter's log line {message:?} {fields:?}"),
        WAIT_S,
        || matching(&snapshotter_log_from(snap, from)),
        || snapshotter_log_from(snap, from),
    )
}
