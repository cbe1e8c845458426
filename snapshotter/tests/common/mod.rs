//! The snapshotter's own end-to-end fixtures: the reference hello-world image and a gRPC client
//! of its socket ([`grpc`]). The shared ones (registry, OCI layouts and busybox images, the
//! snapshotter and containerd processes, the CRI client) are `overlaybd_integration`'s,
//! re-exported here.

#![allow(dead_code, clippy::result_large_err)]

pub mod grpc;

use std::path::{Path, PathBuf};

pub use overlaybd_integration::cri;
pub use overlaybd_integration::fixtures::*;

/// The reference blobs shared with the backstore's tests.
pub fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backstore/tests/data/reference").join(name)
}

/// The reference overlaybd hello-world image (manifest, config and layer as the reference
/// convertor made them) as an OCI layout.
pub fn reference_hello(dir: &Path) -> OciLayout {
    let o = OciLayout::new(dir);
    for f in ["hello-world-amd64-overlaybd-layer.tar", "hello-world-amd64-overlaybd-config.json"] {
        o.blob(&std::fs::read(reference(f)).unwrap());
    }
    let m = std::fs::read_to_string(reference("hello-world-amd64-overlaybd-manifest.json")).unwrap();
    o.index(&m, "obd");
    o
}

/// The reference layer's digest and size.
pub const HELLO_LAYER: &str = "sha256:022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d";
/// Its size.
pub const HELLO_LAYER_SIZE: u64 = 642_560;
/// sha256 of /hello in it.
pub const HELLO_SHA: &str = "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014";

/// The user agent of the snapshotter's registry requests.
pub const SNAPSHOTTER_AGENT: &str = "overlaybd-rs/";

/// The snapshotter config lines of a file cache in `cache` (its default place depends on the
/// machine: a test names it).
pub fn cache_toml(cache: &Path) -> String {
    format!("[backstore.cacheConfig]\ncacheType = \"file\"\ncacheDir = \"{}\"\n", cache.display())
}

/// What the chunk cache in `cache` holds of blob `digest`: the metadata ranges (files
/// `meta-<offset>-<len>`, as `offset..offset+len`) and the names of the other files (chunks of
/// layer data).
pub fn cached(cache: &Path, digest: &str) -> (Vec<(u64, u64)>, Vec<String>) {
    let hex = digest.trim_start_matches("sha256:");
    let dir = cache.join(&hex[..2]).join(hex);
    let (mut meta, mut other) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let range = name.strip_prefix("meta-").and_then(|r| r.split_once('-')).and_then(|(o, l)| {
            let (o, l) = (o.parse::<u64>().ok()?, l.parse::<u64>().ok()?);
            Some((o, o + l))
        });
        match range {
            Some(r) => meta.push(r),
            None => other.push(name),
        }
    }
    meta.sort_unstable();
    other.sort();
    (meta, other)
}

/// The ranges of blob `digest` the snapshotter asked for, of the requests `reqs` recorded by a
/// [`Proxy`]; fails on a GET of the blob that is not a range request.
pub fn snapshotter_ranges(reqs: &[ProxyRequest], digest: &str) -> Vec<(u64, u64)> {
    let mine: Vec<&ProxyRequest> =
        reqs.iter().filter(|r| r.is_blob_get(digest) && r.user_agent.starts_with(SNAPSHOTTER_AGENT)).collect();
    mine.iter()
        .map(|r| r.range.unwrap_or_else(|| panic!("a GET of the whole blob {digest}: {r:?}\nall requests: {reqs:#?}")))
        .collect()
}

/// Checks that what the snapshotter fetched of blob `digest` (`size` bytes), seen in `reqs`, was
/// its metadata only, never layer data: every request a range request, the ranges those of the
/// metadata reads (aligned to the metadata granule, one from the head of the blob and one from
/// its tail, few bytes), each kept in the cache `cache` as a `meta-*` file and nothing else, and no
/// chunk of data in the cache. To be called once the fetch is over (it was logged).
pub fn assert_only_metadata_fetched(reqs: &[ProxyRequest], digest: &str, size: u64, cache: &Path) {
    use backstore::remote::blob::META_GRANULE;
    let mut fetched = snapshotter_ranges(reqs, digest);
    fetched.sort_unstable();
    fetched.dedup(); // (a request tried again asks for the same range)
    let (meta, chunks) = cached(cache, digest);
    let all = || format!("ranges fetched {fetched:?}, metadata cached {meta:?}, chunks cached {chunks:?}");
    eprintln!("{digest} ({size} bytes): {}", all());
    assert!(!fetched.is_empty(), "no metadata of {digest} fetched: {}", all());
    assert_eq!(fetched, meta, "what was fetched is not what the cache keeps as metadata: {}", all());
    assert!(chunks.is_empty(), "layer data of {digest} is in the cache: {}", all());
    for &(a, b) in &fetched {
        assert!(a % META_GRANULE == 0 && (b % META_GRANULE == 0 || b == size) && b <= size, "{}", all());
    }
    assert!(fetched.iter().any(|r| r.0 == 0), "no range from the head: {}", all());
    // (the end of a tar-wrapped layer is the tar's padding, after the trailer)
    assert!(fetched.iter().any(|r| r.1 + (64 << 10) >= size), "no range from the tail: {}", all());
    let total: u64 = fetched.iter().map(|(a, b)| b - a).sum();
    assert!(total <= (size / 2).max(256 << 10), "{total} bytes of a {size}-byte blob: {}", all());
}
