//! LSMT layers: the block-level delta format of overlaybd (spec §3).
//!
//! * [`segment`]: the 16-byte index entry mapping a range of sectors to where its bytes live;
//! * [`header`]: the 4096-byte header/trailer;
//! * [`index`]: a sorted, read-only index with fast lookup, and the merge of several layers;
//! * [`interval_map`]: the mutable index of a writable layer (newest write wins);
//! * [`committed`]: read-only layer files (committed or sealed);
//! * [`writable`]: writable layers (append-only pair or sparse file), `seal`;
//! * [`commit`]: compaction of any layer into a committed layer file.

pub mod commit;
pub mod committed;
pub mod header;
pub mod index;
pub mod interval_map;
pub mod search;
pub mod segment;
pub mod writable;

pub use commit::{write_committed, CommitOptions};
pub use committed::CommittedLayer;
pub use header::LsmtHeader;
pub use index::SortedIndex;
pub use segment::Segment;
pub use writable::WritableLayer;

/// Size of an LSMT header or trailer.
pub const HEADER_SIZE: u64 = 4096;
/// The first data sector of a layer file (right after the header).
pub const DATA_START_SECTOR: u64 = HEADER_SIZE / crate::SECTOR;
/// A committed layer may hold at most this many index entries (padding included): the
/// reference refuses larger ones.
pub const MAX_COMMITTED_ENTRIES: u64 = 1_000_000;
/// A writable layer's index log may hold at most this many entries.
pub const MAX_LOG_ENTRIES: u64 = 128_000_000;
/// A merged multi-layer index may hold at most this many entries.
pub const MAX_MERGED_ENTRIES: u64 = 128_000_000;
/// At most this many layers can be stacked (the layer number must fit the 8-bit tag).
pub const MAX_LAYERS: usize = 255;
