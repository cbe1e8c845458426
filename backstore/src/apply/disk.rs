//! The layer stack as the disk under libext2fs.

use std::sync::Arc;

use crate::block::BlockDevice;

/// libext2fs reports errnos by their message: keep the errno, log the whole error.
fn errno(op: &str, e: crate::Error) -> std::io::Error {
    tracing::error!(op, error = %e, "layer stack I/O failed");
    std::io::Error::from_raw_os_error(e.errno())
}

/// A [`BlockDevice`] (the merged stack with its writable upper) seen as an [`ext2fs::Disk`].
pub struct StackDisk(pub Arc<dyn BlockDevice>);

impl ext2fs::Disk for StackDisk {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset).map_err(|e| errno("read", e))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset).map_err(|e| errno("write", e))
    }
    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        // A discard of the stack reads as zeros, over lower data too.
        self.0.discard(offset, len).map_err(|e| errno("discard", e))
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush().map_err(|e| errno("flush", e))
    }
}
