//! The layer stack as the disk under libext2fs.

use std::sync::Arc;

use crate::block::BlockDevice;

/// A [`BlockDevice`] (the merged stack with its writable upper) seen as an [`ext2fs::Disk`].
pub struct StackDisk(pub Arc<dyn BlockDevice>);

impl ext2fs::Disk for StackDisk {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        Ok(self.0.read_at(buf, offset)?)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        Ok(self.0.write_at(buf, offset)?)
    }
    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        // A discard of the stack reads as zeros, over lower data too.
        Ok(self.0.discard(offset, len)?)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(self.0.flush()?)
    }
}
