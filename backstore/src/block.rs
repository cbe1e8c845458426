//! The block device interface that the frontends (TCMU, ublk, FUSE+loop) serve.

use crate::Result;

/// A virtual disk addressed in bytes; all offsets and lengths are multiples of 512.
/// Implementations are shared between the frontends' I/O threads.
pub trait BlockDevice: Send + Sync {
    /// Size of the device in bytes.
    fn size(&self) -> u64;
    /// True if writes and discards are refused.
    fn read_only(&self) -> bool;
    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes `len` bytes at `offset` read as zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Makes completed writes durable.
    fn flush(&self) -> Result<()>;
}
