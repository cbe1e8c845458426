//! Errors of the backstore: each names the file, the offset or block and what is wrong.

use std::io;

/// Result with the backstore's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing overlaybd files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call on a file failed.
    // The cause is part of the message, not a `source()`: reporters that print the chain
    // would otherwise repeat it.
    #[error("{file}: {op}: {cause}")]
    Io {
        /// The file (or other source) the call was made on.
        file: String,
        /// What was attempted ("read at 4096", "create", ...).
        op: String,
        /// The underlying error.
        cause: io::Error,
    },
    /// The file is not in the expected format or violates one of its invariants.
    #[error("{file}: not a valid {format}: {reason}")]
    Format {
        /// The file.
        file: String,
        /// The format that was expected ("LSMT layer", "ZFile", "tar wrapper", ...).
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A ZFile block does not match its stored CRC32C: the blob is corrupt.
    #[error(
        "{file}: ZFile block {block} (stored at byte {offset}, {len} bytes) is corrupt: \
         CRC32C {computed:#010x} does not match the stored checksum {stored:#010x}"
    )]
    BlockChecksum {
        /// The file.
        file: String,
        /// Block number.
        block: u64,
        /// Byte offset of the stored block in the ZFile.
        offset: u64,
        /// Stored length of the block, checksum included.
        len: u32,
        /// The checksum stored after the block.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// A ZFile block has a valid checksum (or none) but does not decompress.
    #[error("{file}: ZFile block {block} is corrupt: cannot decompress: {reason}")]
    Decompress {
        /// The file.
        file: String,
        /// Block number.
        block: u64,
        /// What the decompressor said.
        reason: String,
    },
    /// The file ends before data its own metadata points to.
    #[error("{file}: truncated: {what} needs bytes {offset}..{end}, but the file has {size} bytes")]
    Truncated {
        /// The file.
        file: String,
        /// Which structure needed the bytes.
        what: String,
        /// First byte needed.
        offset: u64,
        /// One past the last byte needed.
        end: u64,
        /// Size of the file.
        size: u64,
    },
    /// A writable layer's index points beyond the end of its data file.
    #[error(
        "{index}: entry {entry} maps sectors {start}..{end} of {data}, which has only {have} \
         sectors: the data file was cut short (if this follows a crash, the unflushed tail can \
         be rolled back with recovery)"
    )]
    DataFileCutShort {
        /// The index file.
        index: String,
        /// The data file.
        data: String,
        /// Number of the offending log entry.
        entry: u64,
        /// First sector the entry needs.
        start: u64,
        /// One past the last sector the entry needs.
        end: u64,
        /// Sectors present in the data file.
        have: u64,
    },
    /// An I/O request is not aligned to 512-byte sectors.
    #[error("I/O at byte {offset}, length {len} is not aligned to 512-byte sectors")]
    Unaligned {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// An I/O request reaches past the end of the device.
    #[error("I/O at byte {offset}, length {len} reaches past the end of the {size}-byte device")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Device size.
        size: u64,
    },
    /// A write or discard was sent to a stack without a writable layer.
    #[error("the device is read-only (no writable upper layer)")]
    ReadOnly,
    /// A limit of the format or of the reference implementation would be exceeded.
    #[error("{what}: {value} exceeds the limit of {limit}")]
    Limit {
        /// What is being counted.
        what: String,
        /// The value found or requested.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A caller-supplied argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A trace file (`recordTracePath`, an acceleration layer's `trace`) is unusable.
    #[error("{file}: not a usable trace: {problem}")]
    Trace {
        /// The trace file.
        file: String,
        /// What is wrong with it.
        problem: TraceProblem,
    },
}

/// What is wrong with a trace file (spec §11).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceProblem {
    /// The first 4 bytes are not the trace magic.
    #[error("bad magic {found:#010x} (expected {expected:#010x})")]
    BadMagic {
        /// The magic found.
        found: u32,
        /// The trace magic.
        expected: u32,
    },
    /// The header's data size is not a whole number of 24-byte records.
    #[error("data size {data_size} in the header is not a multiple of the 24-byte record size")]
    DataSize {
        /// The header's data size.
        data_size: u64,
    },
    /// The file is shorter than its header says.
    #[error("truncated: the header and {data_size} bytes of records need {needed} bytes, the file has {have}")]
    Truncated {
        /// The header's data size.
        data_size: u64,
        /// Bytes the header promises (header included).
        needed: u64,
        /// Bytes present.
        have: u64,
    },
    /// The records do not match the header's checksum.
    #[error("checksum mismatch: the records have CRC32C {computed:#010x}, the header says {stored:#010x}")]
    Checksum {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the records read.
        computed: u32,
    },
    /// A record's operation byte is neither `R` nor `W`.
    #[error("record {record} has operation byte {op:#04x} (expected 'R' or 'W')")]
    BadOp {
        /// Record number.
        record: usize,
        /// The byte found.
        op: u8,
    },
    /// A record names a layer the stack does not have (the trace of another image?).
    #[error(
        "record {record} names layer {layer}, but the stack has {layers} lower layers (the trace of another image?)"
    )]
    LayerOutOfRange {
        /// Record number.
        record: usize,
        /// Layer index in the record.
        layer: u32,
        /// Number of lowers in the stack.
        layers: usize,
    },
    /// A record's range is not inside its layer's data area.
    #[error(
        "record {record} reads bytes {offset}..{end} of layer {layer}, outside its data area {start}..{limit} \
         (the trace of another image?)"
    )]
    OutsideDataArea {
        /// Record number.
        record: usize,
        /// Layer index.
        layer: u32,
        /// First byte.
        offset: u64,
        /// One past the last byte (saturated).
        end: u64,
        /// First byte of the data area.
        start: u64,
        /// One past the last byte of the data area.
        limit: u64,
    },
}

impl Error {
    /// An [`Error::Io`] for `file` and the operation `op`.
    pub fn io(file: impl Into<String>, op: impl Into<String>, source: io::Error) -> Self {
        Error::Io { file: file.into(), op: op.into(), cause: source }
    }

    /// An [`Error::Format`].
    pub fn format(file: impl Into<String>, format: &'static str, reason: impl Into<String>) -> Self {
        Error::Format { file: file.into(), format, reason: reason.into() }
    }

    /// The errno that best describes this error, for block frontends and tools.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { cause, .. } => cause.raw_os_error().unwrap_or(libc_eio()),
            Error::Unaligned { .. } | Error::InvalidArgument(_) => 22, // EINVAL
            Error::OutOfRange { .. } => 34,                            // ERANGE
            Error::ReadOnly => 30,                                     // EROFS
            Error::Limit { .. } => 27,                                 // EFBIG
            _ => libc_eio(),
        }
    }
}

const fn libc_eio() -> i32 {
    5
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { cause, file, op } => io::Error::new(cause.kind(), format!("{file}: {op}: {cause}")),
            other => io::Error::other(other),
        }
    }
}
