//! Configuration types of overlaybd-rs.
//!
//! * [`device`]: the per-device `config.v1.json` the snapshotter writes and the backstore opens
//!   (spec `overlaybd-format.md` §8), field names and defaults as the reference's;
//! * [`global`]: the global backstore settings (`overlaybd.json`, §9), as JSON or TOML.

pub mod device;
pub mod global;

pub use device::{DeviceConfig, LowerLayer, UpperLayer};
pub use global::GlobalConfig;
