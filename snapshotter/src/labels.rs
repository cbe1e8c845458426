//! The snapshot labels the snapshotter reads and writes (`snapshotter.md` §1.2). containerd
//! forwards to a proxy snapshotter only `containerd.io/snapshot.ref` and labels under
//! `containerd.io/snapshot/`, which is why every overlaybd label has that prefix.

/// The chain ID of the layer being unpacked: a layer pull, never a container rootfs.
pub const TARGET_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// Image reference given by `ctr-obd rpull` (first source of `repoBlobUrl`).
pub const TARGET_IMAGE_REF: &str = "containerd.io/snapshot/image-ref";
/// Image reference given by containerd's CRI plugin (second source of `repoBlobUrl`).
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// Digest of an overlaybd layer blob.
pub const BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
/// Size of an overlaybd layer blob.
pub const BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
/// `fstype[;mountopts[;mkfsopts]]` of a layer.
pub const BLOB_FS_TYPE: &str = "containerd.io/snapshot/overlaybd/blob-fs-type";
/// The top layer of a record-trace image.
pub const ACCELERATION_LAYER: &str = "containerd.io/snapshot/overlaybd/acceleration-layer";
/// Record a trace.
pub const RECORD_TRACE: &str = "containerd.io/snapshot/overlaybd/record-trace";
/// Where to record (or replay) the trace.
pub const RECORD_TRACE_PATH: &str = "containerd.io/snapshot/overlaybd/record-trace-path";
/// Virtual size in GB of a parentless writable layer.
pub const VSIZE: &str = "containerd.io/snapshot/overlaybd/vsize";
/// `true`: the image's registry speaks plain HTTP (`ctr-obd rpull --plain-http` sets it), so the
/// layers are read over `http://`, as for a host marked `insecure` in `mirrorRegistry`.
pub const PLAIN_HTTP: &str = "containerd.io/snapshot/overlaybd/plain-http";
/// `download`: pull the blob through containerd instead of lazily.
pub const DOWNLOAD_REMOTE_BLOB: &str = "containerd.io/snapshot/overlaybd/download-remote-blob";
/// TurboOCI layer markers (current and legacy names).
pub const TURBO_TARGET_DIGEST: &[&str] = &[
    "containerd.io/snapshot/overlaybd/turbo-oci/target-digest",
    "containerd.io/snapshot/overlaybd/fastoci/target-digest",
];
/// An external producer wants the plain directory of a normal layer.
pub const CONVERT_TO_TURBO: &str = "containerd.io/snapshot/overlaybd/convert2turbo-oci";
/// Per-snapshot writable mode: `dir` or `dev` (else overlayfs).
pub const WRITABLE: &str = "containerd.io/snapshot/overlaybd.writable";
/// Where the sealed writable layer of a committed snapshot is.
pub const LOCAL_COMMIT_PATH: &str = "containerd.io/snapshot/overlaybd.localcommitpath";
/// Marker on a remote layer the snapshotter committed itself.
pub const REMOTE: &str = "containerd.io/snapshot/remote";
/// Its value.
pub const REMOTE_VALUE: &str = "remote snapshot";
/// `image`: a Prepare that is not a container rootfs.
pub const SNAPSHOT_TYPE: &str = "containerd.io/snapshot/type";
/// Project quota of a rootfs.
pub const DISK_QUOTA: &str = "containerd.io/snapshot/disk_quota";
/// Directory holding `writable_data`/`writable_index` instead of `<sn>/block`.
pub const ACTIVE_PATH: &str = "containerd.io/snapshot/overlay.active.path";
