//! OCI images to overlaybd images (`snapshotter.md` §11), in user space: no root, no devices.
//!
//! * [`chain`]: chain IDs of a layer stack and the layer UUIDs derived from them, which make
//!   the output reproducible (the same input always gives the same digests);
//! * [`layer`]: one overlaybd layer from an OCI layer tar on top of the layers below it
//!   (create, mkfs for the bottom one, apply, commit to a tar-wrapped ZFile);
//! * [`image`]: the converted image config (diff IDs) and manifest (layer descriptors with the
//!   overlaybd annotations, OCI or Docker media types).
//!
//! * [`registry`]: manifests and blobs from and to a registry (digest- and size-checked);
//! * [`store`]: the deduplication store (which blob a layer stack was converted to);
//! * [`convert`]: registry-to-registry conversion of indexes and manifests, the pipeline of
//!   `overlaybd-convertor`.
//!
//! `ctr-obd obdconv` builds on [`layer`] and [`image`].

pub mod chain;
pub mod convert;
pub mod error;
pub mod image;
pub mod layer;
pub mod registry;
pub mod store;

pub use error::{Error, Result};
