//! `overlaybd-snapshotter`: containerd's proxy snapshotter for overlaybd images, owning the
//! block devices of its snapshots in-process.
//!
//! * [`service`]: the gRPC Snapshots service, over
//! * [`snapshots`]: the snapshot state machine (Prepare/View/Mounts/Commit/Remove/...), which uses
//!   * [`store`]: the embedded metadata store (redb),
//!   * [`storage`]: what a snapshot holds (plain, local or remote overlaybd),
//!   * [`blockconfig`]: the `config.v1.json` of each device,
//!   * [`devices`]: attach, format, mount and detach through the backstore's frontends,
//!   * [`warmup`]: an acceleration layer's trace replayed when it is pulled,
//!   * [`mounts`], [`usage`], [`filter`], [`fstype`], [`labels`], [`layout`];
//! * [`metrics`]: Prometheus metrics; [`daemon`]: the process (socket, signals, shutdown).

pub mod blockconfig;
pub mod daemon;
pub mod devices;
pub mod error;
pub mod filter;
pub mod fstype;
pub mod labels;
pub mod layout;
pub mod metrics;
pub mod mounts;
pub mod service;
pub mod snapshots;
pub mod storage;
pub mod store;
pub mod usage;
pub mod warmup;

pub use error::{Error, Result};
