//! Background download of a whole remote blob: after `delay` plus a random part of
//! `delayExtra` seconds, the blob is fetched in order at most `maxMBps` into
//! `<dir>/overlaybd.commit.download`, its sha256 checked against the digest, and the file
//! renamed to `<dir>/overlaybd.commit`; reads then go to the local file. A partial download is
//! resumed where it stopped (after a restart too). The download stops when its blob is dropped.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::blob::RemoteBlob;
use crate::io::LocalFile;
use crate::{Error, Result};

/// Download settings (the global config's `download` section, or a device's).
#[derive(Clone, Debug, PartialEq)]
pub struct DownloadOptions {
    /// Wait before starting.
    pub delay: Duration,
    /// Up to this much more, at random.
    pub delay_extra: Duration,
    /// Rate limit in bytes per second (0: none).
    pub max_bytes_per_sec: u64,
    /// Whole attempts.
    pub tries: u32,
    /// Bytes per request.
    pub block_size: u64,
}

impl DownloadOptions {
    /// From the reference's keys.
    pub fn from_config(d: &config::global::DownloadConfig) -> Self {
        DownloadOptions {
            delay: Duration::from_secs(d.delay.max(0) as u64),
            delay_extra: Duration::from_secs(d.delay_extra.max(0) as u64),
            max_bytes_per_sec: d.max_mbps.max(0) as u64 * 1_000_000,
            tries: d.try_cnt.clamp(1, 100) as u32,
            block_size: d.block_size.clamp(4096, 64 << 20),
        }
    }
}

/// The final name of a downloaded layer in `dir`.
pub fn committed_path(dir: &Path) -> PathBuf {
    dir.join("overlaybd.commit")
}

/// Starts the download of `blob` into `dir` on a thread of its own.
pub fn spawn(blob: &Arc<RemoteBlob>, dir: PathBuf, opts: DownloadOptions) {
    let weak = Arc::downgrade(blob);
    let name = blob.digest().to_string();
    let r = std::thread::Builder::new().name("obd-download".into()).spawn(move || {
        let extra = if opts.delay_extra.is_zero() {
            Duration::ZERO
        } else {
            let seed = Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64 ^ name.len() as u64;
            let nanos = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % opts.delay_extra.as_nanos().max(1) as u64;
            Duration::from_nanos(nanos)
        };
        if !sleep_while_alive(&weak, opts.delay + extra) {
            return;
        }
        for attempt in 1..=opts.tries {
            match download(&weak, &dir, &opts) {
                Ok(true) => return,
                Ok(false) => return, // the blob went away
                Err(e) => tracing::warn!(blob = %name, attempt, error = %e, "background download failed"),
            }
            if !sleep_while_alive(&weak, Duration::from_secs(attempt as u64)) {
                return;
            }
        }
        tracing::error!(blob = %name, "background download gave up; reads stay remote");
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot start the background download");
    }
}

/// Sleeps `d` in short steps; false if the blob is dropped meanwhile.
fn sleep_while_alive(blob: &Weak<RemoteBlob>, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if blob.strong_count() == 0 {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
    blob.strong_count() > 0
}

/// One attempt; Ok(false) if the blob was dropped before the end.
fn download(weak: &Weak<RemoteBlob>, dir: &Path, opts: &DownloadOptions) -> Result<bool> {
    let part = dir.join("overlaybd.commit.download");
    let shown = part.display().to_string();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), "create", e))?;
    let (size, digest) = match weak.upgrade() {
        Some(b) => (crate::io::ReadAt::size(b.as_ref()), b.digest().to_string()),
        None => return Ok(false),
    };
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&part)
        .map_err(|e| Error::io(&shown, "open", e))?;
    let mut have = file.metadata().map_err(|e| Error::io(&shown, "stat", e))?.len();
    if have > size {
        file.set_len(0).map_err(|e| Error::io(&shown, "truncate", e))?;
        have = 0;
    }
    // Hash what an earlier run left, then go on from there.
    let mut hash = Sha256::new();
    if have > 0 {
        let mut f = std::fs::File::open(&part).map_err(|e| Error::io(&shown, "open", e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        while left > 0 {
            let n = f.read(&mut buf[..(left.min(1 << 20)) as usize]).map_err(|e| Error::io(&shown, "read", e))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        tracing::info!(blob = %digest, resumed_at = have, "resuming the background download");
    }
    let start = Instant::now();
    let mut fetched = 0u64;
    while have < size {
        let Some(blob) = weak.upgrade() else { return Ok(false) };
        let len = opts.block_size.min(size - have) as usize;
        let data = blob.fetch_uncached(have, len)?;
        drop(blob);
        file.write_all(&data).map_err(|e| Error::io(&shown, "write", e))?;
        hash.update(&data);
        have += len as u64;
        fetched += len as u64;
        if opts.max_bytes_per_sec > 0 {
            let due = Duration::from_secs_f64(fetched as f64 / opts.max_bytes_per_sec as f64);
            let spent = start.elapsed();
            if due > spent && !sleep_while_alive(weak, due - spent) {
                return Ok(false);
            }
        }
    }
    file.sync_all().map_err(|e| Error::io(&shown, "fsync", e))?;
    let got = format!("sha256:{}", hex::encode(hash.finalize()));
    if got != digest {
        let _ = std::fs::remove_file(&part);
        return Err(Error::format(&shown, "downloaded blob", format!("sha256 is {got}, expected {digest}")));
    }
    let done = committed_path(dir);
    std::fs::rename(&part, &done).map_err(|e| Error::io(done.display().to_string(), "rename", e))?;
    let local = Arc::new(LocalFile::open(&done)?);
    match weak.upgrade() {
        Some(b) => b.switch_to_local(local),
        None => return Ok(false),
    }
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(blob = %digest, bytes = fetched, secs, mbps = fetched as f64 / 1e6 / secs.max(1e-9), "downloaded; reads are local now");
    Ok(true)
}
