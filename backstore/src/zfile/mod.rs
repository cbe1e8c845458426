//! ZFile: the random-access block-compression container of overlaybd (spec §4).
//!
//! * [`header`]: the 512-byte header/trailer, its flags and digest;
//! * [`codec`]: LZ4 (raw block) and ZSTD (one frame per block);
//! * [`reader`]: random reads of the raw file, verifying each block's CRC32C;
//! * [`writer`]: streaming, parallel compression.

pub mod codec;
pub mod header;
pub mod reader;
pub mod writer;

pub use codec::Algorithm;
pub use header::ZFileHeader;
pub use reader::ZFile;
pub use writer::{ZFileOptions, ZFileWriter};

/// Size of a ZFile header or trailer.
pub const HEADER_SIZE: u64 = 512;
/// Smallest and largest legal block sizes.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// See [`MIN_BLOCK_SIZE`].
pub const MAX_BLOCK_SIZE: u32 = 65536;
/// Readers refuse jump tables with more entries than this (reference limit).
pub const MAX_BLOCKS: u64 = 1_000_000_000;
