//! `ctr-obd`'s own end-to-end helpers: runs of this package's binary against a test's
//! containerd. The real parts (registry, OCI layouts and busybox images, the snapshotter and
//! containerd processes) are `overlaybd_integration`'s fixtures, re-exported here.

use std::path::Path;
use std::process::Command;

pub use overlaybd_integration::fixtures::*;

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
