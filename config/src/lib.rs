//! Configuration types of overlaybd-rs.
//!
//! * [`device`]: the per-device `config.v1.json` the snapshotter writes and the backstore opens
//!   (spec `overlaybd-format.md` §8), field names and defaults as the reference's;
//! * [`global`]: the global backstore settings (`overlaybd.json`, §9), as JSON or TOML;
//! * [`snapshotter`]: the daemon's `config.toml` (`snapshotter.md` §5.1).

pub mod device;
pub mod global;
pub mod snapshotter;

pub use device::{DeviceConfig, LowerLayer, UpperLayer};
pub use global::GlobalConfig;
pub use snapshotter::{RwMode, SnapshotterConfig};
