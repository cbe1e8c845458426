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
