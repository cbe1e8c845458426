//! Remote layers over loopback against a local file, in one run: a 64 MiB blob pushed to a real
//! registry (Debian's docker-registry), then
//! * cold first-read latency: the first 4 KiB read of a fresh remote blob with an empty cache,
//!   against a 4 KiB read of the local file with its page cache dropped;
//! * throughput: the whole blob in 1 MiB reads through an empty cache, against the local file
//!   with its page cache dropped;
//! * the background download's achieved rate against its `maxMBps`.
//!
//! Run: `cargo bench -p backstore --bench remote_read`.

#[path = "../tests/common/registry.rs"]
#[allow(dead_code)] // shared with the tests, which use more of it
mod registry;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstore::io::{LocalFile, ReadAt};
use backstore::remote::blob::RemoteBlob;
use backstore::remote::cache::BlobCache;
use backstore::remote::download::{self, DownloadOptions};
use backstore::remote::registry::{ClientOptions, RegistryClient};

/// sha256 hex (used by the registry helper).
pub fn sha256(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

/// A file of the reference test data (used by the registry helper).
pub fn reference(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference").join(name)
}

const SIZE: usize = 64 << 20;

fn drop_page_cache(path: &std::path::Path) {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: advice on our own descriptor, plain integers.
    unsafe { nix::libc::posix_fadvise(f.as_raw_fd(), 0, 0, nix::libc::POSIX_FADV_DONTNEED) };
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let data: Vec<u8> = (0..SIZE as u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as u8).collect();
    let reg = registry::Registry::start();
    let digest = reg.push_blob("bench/blob", &data);
    let url = reg.blob_url("bench/blob");
    let dir = tempfile::tempdir().unwrap();
    let local_path = dir.path().join("blob");
    std::fs::write(&local_path, &data).unwrap();
    let client = Arc::new(RegistryClient::new(ClientOptions::default()).unwrap());

    // cold first read
    let mut remote_ms = Vec::new();
    let mut local_ms = Vec::new();
    let mut buf = vec![0u8; 4096];
    for i in 0..15u64 {
        let off = ((i * 4_194_301) % (SIZE as u64 - 4096)) & !4095;
        let cache = BlobCache::open(&dir.path().join(format!("c{i}")), 1 << 30, 256 << 10).unwrap();
        let blob = RemoteBlob::new(client.clone(), &url, &digest, SIZE as u64, Some(cache));
        let t = Instant::now();
        blob.read_at(&mut buf, off).unwrap();
        remote_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(buf[..] == data[off as usize..off as usize + 4096]);
        drop_page_cache(&local_path);
        let lf = LocalFile::open(&local_path).unwrap();
        let t = Instant::now();
        lf.read_at(&mut buf, off).unwrap();
        local_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (r, l) = (median(remote_ms), median(local_ms));
    println!("cold first 4 KiB read: remote {r:.3} ms, local file {l:.3} ms (remote / local = {:.1})", r / l);

    // throughput
    let mut big = vec![0u8; 1 << 20];
    let cache = BlobCache::open(&dir.path().join("seq"), 1 << 30, 256 << 10).unwrap();
    let blob = RemoteBlob::new(client.clone(), &url, &digest, SIZE as u64, Some(cache));
    let t = Instant::now();
    for off in (0..SIZE).step_by(1 << 20) {
        blob.read_at(&mut big, off as u64).unwrap();
    }
    let remote = SIZE as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop_page_cache(&local_path);
    let lf = LocalFile::open(&local_path).unwrap();
    let t = Instant::now();
    for off in (0..SIZE).step_by(1 << 20) {
        lf.read_at(&mut big, off as u64).unwrap();
    }
    let local = SIZE as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!(
        "sequential 1 MiB reads, cold: remote {remote:.0} MB/s, local file {local:.0} MB/s (remote / local = {:.2})",
        remote / local
    );

    // background download rate
    for limit in [20u64, 100] {
        let ddir = dir.path().join(format!("dl{limit}"));
        let blob = Arc::new(RemoteBlob::new(client.clone(), &url, &digest, SIZE as u64, None));
        let opts = DownloadOptions {
            delay: Duration::ZERO,
            delay_extra: Duration::ZERO,
            max_bytes_per_sec: limit * 1_000_000,
            tries: 1,
            block_size: 1 << 20,
        };
        let t = Instant::now();
        download::spawn(&blob, ddir.clone(), opts);
        while !download::committed_path(&ddir).exists() {
            assert!(t.elapsed() < Duration::from_secs(120), "download did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
        let rate = SIZE as f64 / t.elapsed().as_secs_f64() / 1e6;
        println!(
            "background download: {rate:.1} MB/s with maxMBps {limit} (achieved / limit = {:.2})",
            rate / limit as f64
        );
    }
}
