//! overlaybd backstore: the on-disk formats of overlaybd and the merged layer stack.
//!
//! A layer as stored in a registry is nested, outermost first: an optional tar wrapper
//! ([`tar`]), an optional ZFile block-compression container ([`zfile`]) and a mandatory LSMT
//! layer ([`lsmt`]). [`detect::open_layer`] peels the wrappers by magic. Writable layers
//! ([`lsmt::writable`]) are plain local files. A [`stack::Stack`] merges N read-only layers and
//! an optional writable upper into the single virtual disk that the block frontends serve.
//!
//! Every format reads its bytes through the positional [`io::ReadAt`] trait, so it never knows
//! whether they come from a local file, a cache or a registry.

pub mod apply;
pub mod block;
pub mod crc;
pub mod detect;
pub mod device;
pub mod error;
pub mod frontend;
pub mod io;
pub mod lsmt;
pub mod remote;
pub mod stack;
pub mod tar;
pub mod tools;
pub mod trace;
pub mod uuid;
pub mod wrap;
pub mod zfile;

pub use error::{Error, Result};

/// Size of a sector: the unit of every LSMT offset and length.
pub const SECTOR: u64 = 512;

pub use block::BlockDevice;
pub use stack::Stack;
