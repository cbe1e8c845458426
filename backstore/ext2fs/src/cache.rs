//! A write-back cache of small block writes and reads for one I/O channel.
//!
//! libext2fs reads and rewrites the same metadata blocks (inode tables, directories, extent
//! blocks) over and over while a layer is unpacked; without a cache each of those is a system
//! call on the layer below. Small writes stay here until a flush, when they go out sorted and
//! coalesced; large writes (file data) go straight through and replace what is cached.

use std::collections::{BTreeMap, HashMap};

use crate::disk::Disk;

/// Writes of at most this many blocks are cached; larger ones go through.
pub const SMALL_WRITE_BLOCKS: u64 = 8;

/// The cache of one channel. Block numbers are in units of `block_size`.
pub struct BlockCache {
    block_size: usize,
    capacity: usize,
    blocks: HashMap<u64, Vec<u8>>,
    dirty: BTreeMap<u64, ()>,
}

impl BlockCache {
    /// An empty cache of up to `capacity_bytes`.
    pub fn new(block_size: usize, capacity_bytes: usize) -> Self {
        BlockCache {
            block_size,
            capacity: (capacity_bytes / block_size.max(1)).max(16),
            blocks: HashMap::new(),
            dirty: BTreeMap::new(),
        }
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Writes every dirty block to `disk`, adjacent ones together.
    pub fn flush(&mut self, disk: &dyn Disk) -> std::io::Result<()> {
        let bs = self.block_size as u64;
        let dirty: Vec<u64> = self.dirty.keys().copied().collect();
        let mut i = 0;
        while i < dirty.len() {
            let mut j = i + 1;
            while j < dirty.len() && dirty[j] == dirty[j - 1] + 1 && j - i < 256 {
                j += 1;
            }
            let mut buf = Vec::with_capacity((j - i) * self.block_size);
            for b in &dirty[i..j] {
                buf.extend_from_slice(&self.blocks[b]);
            }
            disk.write_at(&buf, dirty[i] * bs)?;
            i = j;
        }
        self.dirty.clear();
        Ok(())
    }

    /// Flushes, then forgets everything (block size change, byte-addressed I/O).
    pub fn reset(&mut self, disk: &dyn Disk, block_size: usize) -> std::io::Result<()> {
        self.flush(disk)?;
        self.blocks.clear();
        self.block_size = block_size;
        Ok(())
    }

    fn make_room(&mut self, disk: &dyn Disk) -> std::io::Result<()> {
        if self.blocks.len() >= self.capacity {
            self.flush(disk)?;
            self.blocks.clear();
        }
        Ok(())
    }

    /// Reads `count` blocks at `block` into `buf`, from the cache where it has them.
    pub fn read(&mut self, disk: &dyn Disk, block: u64, count: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let bs = self.block_size;
        if count == 1 {
            if let Some(b) = self.blocks.get(&block) {
                buf.copy_from_slice(b);
                return Ok(());
            }
            disk.read_at(buf, block * bs as u64)?;
            self.make_room(disk)?;
            self.blocks.insert(block, buf.to_vec());
            return Ok(());
        }
        disk.read_at(buf, block * bs as u64)?;
        if !self.blocks.is_empty() {
            for i in 0..count {
                if let Some(b) = self.blocks.get(&(block + i)) {
                    buf[i as usize * bs..(i as usize + 1) * bs].copy_from_slice(b);
                }
            }
        }
        Ok(())
    }

    /// Writes `count` blocks at `block` from `data`: cached if small, else through.
    pub fn write(&mut self, disk: &dyn Disk, block: u64, count: u64, data: &[u8]) -> std::io::Result<()> {
        let bs = self.block_size;
        if count > SMALL_WRITE_BLOCKS {
            for i in 0..count {
                if self.blocks.remove(&(block + i)).is_some() {
                    self.dirty.remove(&(block + i));
                }
            }
            return disk.write_at(data, block * bs as u64);
        }
        self.make_room(disk)?;
        for i in 0..count {
            let b = data[i as usize * bs..(i as usize + 1) * bs].to_vec();
            self.blocks.insert(block + i, b);
            self.dirty.insert(block + i, ());
        }
        Ok(())
    }

    /// Drops `count` blocks at `block` (they are being zeroed on the disk).
    pub fn forget(&mut self, block: u64, count: u64) {
        if count > self.blocks.len() as u64 {
            self.blocks.retain(|b, _| *b < block || *b >= block + count);
            self.dirty.retain(|b, _| *b < block || *b >= block + count);
        } else {
            for i in 0..count {
                self.blocks.remove(&(block + i));
                self.dirty.remove(&(block + i));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Mem(Mutex<Vec<u8>>, Mutex<usize>);
    impl Disk for Mem {
        fn size(&self) -> u64 {
            self.0.lock().unwrap().len() as u64
        }
        fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
            let d = self.0.lock().unwrap();
            buf.copy_from_slice(&d[off as usize..off as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
            *self.1.lock().unwrap() += 1;
            self.0.lock().unwrap()[off as usize..off as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn small_writes_wait_large_ones_replace_and_reads_see_both() {
        let disk = Mem(Mutex::new(vec![0u8; 64 * 16]), Mutex::new(0));
        let mut c = BlockCache::new(16, 1 << 20);
        c.write(&disk, 3, 1, &[3; 16]).unwrap();
        c.write(&disk, 4, 2, &[4; 32]).unwrap();
        assert_eq!(*disk.1.lock().unwrap(), 0, "small writes are cached");
        let mut b = vec![0u8; 16 * 4];
        c.read(&disk, 2, 4, &mut b).unwrap();
        assert_eq!(&b[16..], &[[3u8; 16], [4; 16], [4; 16]].concat()[..]);
        // a large write over block 4 replaces the cached copy
        c.write(&disk, 4, 10, &[9; 160]).unwrap();
        c.read(&disk, 4, 1, &mut b[..16]).unwrap();
        assert_eq!(&b[..16], &[9; 16]);
        c.flush(&disk).unwrap();
        assert_eq!(*disk.1.lock().unwrap(), 2, "one write through, one flush of block 3");
        assert_eq!(&disk.0.lock().unwrap()[3 * 16..4 * 16], &[3; 16]);
        assert_eq!(&disk.0.lock().unwrap()[4 * 16..5 * 16], &[9; 16]);
    }
}
