//! Configuration types of overlaybd-rs.
//!
//! * [`device`]: the per-device `config.v1.json` the snapshotter writes and the backstore opens
//!   (spec `overlaybd-format.md` §8), field names and defaults as the reference's.

pub mod device;

pub use device::{DeviceConfig, LowerLayer, UpperLayer};
