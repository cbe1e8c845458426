//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod kernel;
pub mod proxy;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The test data folder.
pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A reference blob.
pub fn reference(name: &str) -> PathBuf {
    data().join("reference").join(name)
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Unpacks the stock base layer (`ext4_64`, a bare legacy ZFile) into `dir`.
pub fn base_layer(dir: &Path) -> PathBuf {
    run(Command::new("tar").arg("-xzf").arg(reference("overlaybd-baselayer-ext4_64.tar.gz")).arg("-C").arg(dir));
    dir.join("ext4_64")
}

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// sha256 of bytes, hex.
pub fn sha256(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

/// The independent reader, `python3 obd_inspect.py ARGS...`.
pub fn inspect() -> Command {
    let mut c = Command::new("python3");
    c.arg(data().join("obd_inspect.py"));
    c
}

/// Path of one of this package's binaries.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "overlaybd-create" => PathBuf::from(env!("CARGO_BIN_EXE_overlaybd-create")),
        "overlaybd-commit" => PathBuf::from(env!("CARGO_BIN_EXE_overlaybd-commit")),
        "overlaybd-zfile" => PathBuf::from(env!("CARGO_BIN_EXE_overlaybd-zfile")),
        "overlaybd-dump" => PathBuf::from(env!("CARGO_BIN_EXE_overlaybd-dump")),
        "overlaybd-info" => PathBuf::from(env!("CARGO_BIN_EXE_overlaybd-info")),
        "overlaybd-attach" => PathBuf::from(env!("CARGO_BIN_EXE_overlaybd-attach")),
        "overlaybd-apply" => PathBuf::from(env!("CARGO_BIN_EXE_overlaybd-apply")),
        other => panic!("no binary {other}"),
    }
}

/// `len` pseudo-random bytes (xorshift from `seed`): incompressible, reproducible.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
