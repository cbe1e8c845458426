//! Where a file's data lives: path resolution and the physical extents of an inode's data
//! blocks (block-mapped or extent-mapped files alike), for readers that fetch a file's blocks
//! ahead of time.

use std::ffi::{c_int, c_void, CString};

use crate::error::{check, Error, Result};
use crate::fs::{Filesystem, Ino, ROOT};
use crate::sys;

/// A run of a file's data blocks: `count` blocks from logical block `logical` live at
/// physical block `physical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First block in the file.
    pub logical: u64,
    /// First block on the disk.
    pub physical: u64,
    /// Blocks.
    pub count: u64,
}

impl Filesystem {
    /// The inode at absolute `path` (symbolic links followed, the last one too); `None` if
    /// the path does not exist.
    pub fn namei(&self, path: &str) -> Result<Option<Ino>> {
        let c = CString::new(path).map_err(|_| Error::InvalidArgument(format!("path {path:?} contains NUL")))?;
        let mut ino: Ino = 0;
        // SAFETY: open filesystem, NUL-terminated path, out pointer valid for the call.
        let code = unsafe { sys::ext2fs_namei_follow(self.raw, ROOT, ROOT, c.as_ptr(), &mut ino) };
        if code == sys::EXT2_ET_FILE_NOT_FOUND as sys::errcode_t || code == sys::EXT2_ET_NO_DIRECTORY as sys::errcode_t
        {
            return Ok(None);
        }
        check(code, || format!("resolve {path:?}"))?;
        Ok(Some(ino))
    }

    /// The data blocks of inode `ino`, in logical order, adjacent runs merged. Files whose data
    /// is inline in the inode have none.
    pub fn data_extents(&self, ino: Ino) -> Result<Vec<Extent>> {
        unsafe extern "C" fn each(
            _fs: sys::ext2_filsys,
            blocknr: *mut sys::blk64_t,
            blockcnt: sys::e2_blkcnt_t,
            _ref_blk: sys::blk64_t,
            _ref_offset: c_int,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: libext2fs passes a valid block number pointer and our Vec.
            let (pblk, out) = unsafe { (*blocknr, &mut *(data as *mut Vec<Extent>)) };
            if blockcnt < 0 || pblk == 0 {
                return 0;
            }
            let l = blockcnt as u64;
            match out.last_mut() {
                Some(e) if e.logical + e.count == l && e.physical + e.count == pblk => e.count += 1,
                _ => out.push(Extent { logical: l, physical: pblk, count: 1 }),
            }
            0
        }
        let inode = self.read_inode(ino)?;
        if inode.i_flags & sys::EXT4_INLINE_DATA_FL != 0 {
            return Ok(Vec::new());
        }
        let small = &inode as *const sys::ext2_inode_large as *mut sys::ext2_inode;
        // SAFETY: `small` points to the inode read above; the call only reads it.
        if unsafe { sys::ext2fs_inode_has_valid_blocks2(self.raw, small) } == 0 {
            return Ok(Vec::new());
        }
        let mut out: Vec<Extent> = Vec::new();
        let flags = (sys::BLOCK_FLAG_READ_ONLY | sys::BLOCK_FLAG_DATA_ONLY) as c_int;
        // SAFETY: open filesystem; `out` outlives the iteration; libext2fs allocates its own
        // block buffer when given null.
        let code = unsafe {
            sys::ext2fs_block_iterate3(
                self.raw,
                ino,
                flags,
                std::ptr::null_mut(),
                Some(each),
                &mut out as *mut Vec<Extent> as *mut c_void,
            )
        };
        check(code, || format!("map the blocks of inode {ino}"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mkfs::MkfsOptions;
    use crate::node::{Attrs, Kind};
    use std::sync::Arc;

    #[test]
    fn files_resolve_to_the_blocks_holding_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let f = std::fs::File::options().create(true).read(true).write(true).truncate(true).open(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        let disk: Arc<dyn crate::Disk> = Arc::new(f);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        {
            let mut fs = crate::mkfs::mkfs(disk.clone(), &MkfsOptions::default()).unwrap();
            let d = fs.mkdir(ROOT, "etc").unwrap();
            let ino = fs.create(d, b"big", &Kind::Regular, &Attrs::default()).unwrap();
            fs.write_data(ino, &mut &data[..], data.len() as u64).unwrap();
            fs.create(ROOT, b"link", &Kind::Symlink(b"/etc/big".to_vec()), &Attrs::default()).unwrap();
            fs.close().unwrap();
        }
        let fs = Filesystem::open_read_only(disk.clone()).unwrap();
        let ino = fs.namei("/etc/big").unwrap().unwrap();
        assert_eq!(fs.namei("/link").unwrap(), Some(ino), "symlinks are followed");
        assert_eq!(fs.namei("/etc/none").unwrap(), None);
        assert_eq!(fs.namei("/etc/big/x").unwrap(), None);
        let ext = fs.data_extents(ino).unwrap();
        let bs = fs.block_size() as u64;
        assert_eq!(ext.iter().map(|e| e.count).sum::<u64>(), (data.len() as u64).div_ceil(bs));
        let mut got = Vec::new();
        for e in &ext {
            let mut b = vec![0u8; (e.count * bs) as usize];
            disk.read_at(&mut b, e.physical * bs).unwrap();
            got.extend_from_slice(&b);
        }
        assert!(got[..data.len()] == data[..], "the extents do not hold the file's bytes");
    }
}
