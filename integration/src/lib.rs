//! Helpers of the end-to-end tests: the real parts they start ([`fixtures`]: a registry,
//! containerd, the overlaybd snapshotter, OCI layouts built here) and a CRI client ([`cri`], also
//! the `cri-pull` binary's). The snapshotter's and `ctr-obd`'s tests take them as a
//! dev-dependency; nothing here is published.

#![warn(missing_docs)]

pub mod cri;
pub mod fixtures;
