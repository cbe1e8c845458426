//! What a filesystem lives on: any byte-addressed disk.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// A disk addressed in bytes. Offsets and lengths from libext2fs are multiples of its block
/// size (at least 1024), except for [`Disk::write_at`] calls made for the superblock, which are
/// still multiples of 512.
pub trait Disk: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeros (discarding them where the disk can).
    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
    /// Makes completed writes durable.
    fn flush(&self) -> std::io::Result<()>;
}

/// A raw image file as a disk.
impl Disk for File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        // Punching a hole keeps a raw image sparse; fall back to writing zeros.
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if fallocate(std::os::fd::AsRawFd::as_raw_fd(self), flags, offset as i64, len as i64).is_ok() {
            return Ok(());
        }
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            FileExt::write_all_at(self, &zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.sync_data()
    }
}
