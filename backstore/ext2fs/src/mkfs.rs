//! Making an ext4 filesystem the way the reference's `overlaybd-create --mkfs` does: 4 KiB
//! blocks, 256-byte inodes, one inode per 16 KiB, no journal, the reference's feature set, and
//! every identifier and time zero so the result is reproducible byte for byte.

use std::sync::Arc;

use crate::disk::Disk;
use crate::error::{check, Error, Result};
use crate::fs::{init_library, Filesystem, ROOT};
use crate::io_manager;
use crate::sys;

/// What to make.
#[derive(Clone, Debug)]
pub struct MkfsOptions {
    /// Block size in bytes.
    pub block_size: u32,
    /// Bytes of disk per inode.
    pub bytes_per_inode: u64,
    /// Inode size in bytes.
    pub inode_size: u16,
    /// Percentage of blocks reserved for root.
    pub reserved_percent: u32,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions { block_size: 4096, bytes_per_inode: 16384, inode_size: 256, reserved_percent: 5 }
    }
}

const COMPAT: u32 = sys::EXT2_FEATURE_COMPAT_EXT_ATTR
    | sys::EXT2_FEATURE_COMPAT_RESIZE_INODE
    | sys::EXT2_FEATURE_COMPAT_DIR_INDEX
    | sys::EXT4_FEATURE_COMPAT_SPARSE_SUPER2;
const INCOMPAT: u32 = sys::EXT2_FEATURE_INCOMPAT_FILETYPE
    | sys::EXT3_FEATURE_INCOMPAT_EXTENTS
    | sys::EXT4_FEATURE_INCOMPAT_64BIT
    | sys::EXT4_FEATURE_INCOMPAT_FLEX_BG;
const RO_COMPAT: u32 = sys::EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER
    | sys::EXT2_FEATURE_RO_COMPAT_LARGE_FILE
    | sys::EXT4_FEATURE_RO_COMPAT_HUGE_FILE
    | sys::EXT4_FEATURE_RO_COMPAT_DIR_NLINK
    | sys::EXT4_FEATURE_RO_COMPAT_EXTRA_ISIZE;

/// Makes a filesystem over the whole of `disk` and returns it open.
pub fn mkfs(disk: Arc<dyn Disk>, opts: &MkfsOptions) -> Result<Filesystem> {
    init_library();
    let bs = opts.block_size as u64;
    if !(1024..=65536).contains(&bs) || !bs.is_power_of_two() {
        return Err(Error::InvalidArgument(format!("block size {bs} must be a power of two in 1024..=65536")));
    }
    let blocks = disk.size() / bs;
    if blocks < 64 {
        return Err(Error::InvalidArgument(format!("a {}-byte disk is too small for a filesystem", disk.size())));
    }
    let mut param = sys::ext2_super_block {
        s_log_block_size: bs.trailing_zeros() - 10,
        s_rev_level: 1,
        s_inode_size: opts.inode_size,
        s_feature_compat: COMPAT,
        s_feature_incompat: INCOMPAT,
        s_feature_ro_compat: RO_COMPAT,
        s_min_extra_isize: 32,
        s_want_extra_isize: 32,
        s_log_groups_per_flex: 0,
        s_errors: sys::EXT2_ERRORS_CONTINUE as u16,
        s_max_mnt_count: -1,
        s_def_hash_version: sys::EXT2_HASH_HALF_MD4 as u8,
        s_backup_bgs: [1, u32::MAX],
        ..Default::default()
    };
    let inodes = (disk.size() / opts.bytes_per_inode).min(u32::MAX as u64);
    param.s_inodes_count = inodes as u32;
    // SAFETY: plain setters on a local superblock.
    unsafe {
        sys::ext2fs_blocks_count_set(&mut param, blocks);
        sys::ext2fs_r_blocks_count_set(&mut param, blocks * opts.reserved_percent as u64 / 100);
    }
    let reg = io_manager::register(disk);
    let mut raw: sys::ext2_filsys = std::ptr::null_mut();
    // SAFETY: valid name, parameters, our manager and an out pointer.
    let code = unsafe {
        sys::ext2fs_initialize(
            reg.name.as_ptr(),
            sys::EXT2_FLAG_64BITS as i32,
            &mut param,
            io_manager::manager(),
            &mut raw,
        )
    };
    check(code, || "initialise the filesystem".into())?;
    let mut fs = Filesystem::from_raw(raw, reg);
    // SAFETY: `fs.raw` is an initialised filesystem; these are the steps of mke2fs.
    unsafe {
        let sb = &mut *(*fs.raw).super_;
        sb.s_uuid = [0; 16];
        sb.s_hash_seed = [0; 4];
        sb.s_flags |= sys::EXT2_FLAGS_SIGNED_HASH;
        sb.s_mkfs_time = 0;
        sb.s_lastcheck = 0;
        check(sys::ext2fs_allocate_tables(fs.raw), || "allocate the group tables".into())?;
        check(sys::ext2fs_convert_subcluster_bitmap(fs.raw, &mut (*fs.raw).block_map), || {
            "convert the block bitmap".into()
        })?;
        // The disk reads as zeros: the inode tables need no writing.
        check(sys::ext2fs_mkdir(fs.raw, ROOT, ROOT, std::ptr::null()), || "make the root directory".into())?;
        (*fs.raw).umask = 0o077;
        let lpf = fs.mkdir(ROOT, "lost+found")?;
        (*fs.raw).umask = 0o022;
        // mke2fs gives lost+found room for entries without allocation at fsck time.
        for _ in 0..2 {
            check(sys::ext2fs_expand_dir(fs.raw, lpf), || "expand lost+found".into())?;
        }
        for ino in (sys::EXT2_ROOT_INO + 1)..(*(*fs.raw).super_).s_first_ino {
            sys::ext2fs_inode_alloc_stats2(fs.raw, ino, 1, 0);
        }
        sys::ext2fs_inode_alloc_stats2(fs.raw, sys::EXT2_BAD_INO, 1, 0);
        check(sys::ext2fs_update_bb_inode(fs.raw, std::ptr::null_mut()), || "write the bad-block inode".into())?;
        check(sys::ext2fs_create_resize_inode(fs.raw), || "make the resize inode".into())?;
    }
    // Zero times on what mkfs made, as the reference's layers have them.
    for ino in [ROOT, fs.lookup(ROOT, b"lost+found")?.unwrap_or(0)] {
        if ino != 0 {
            let mut inode = fs.read_inode(ino)?;
            inode.i_atime = 0;
            inode.i_ctime = 0;
            inode.i_mtime = 0;
            inode.i_crtime = 0;
            fs.write_inode(ino, &inode)?;
        }
    }
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn image(size: u64) -> (tempfile::TempDir, std::path::PathBuf, Arc<dyn Disk>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        f.set_len(size).unwrap();
        (dir, path, Arc::new(f))
    }

    #[test]
    fn mkfs_passes_fsck_and_matches_the_reference_features() {
        let (_d, path, disk) = image(1 << 30);
        let fs = mkfs(disk.clone(), &MkfsOptions::default()).unwrap();
        fs.close().unwrap();
        let out = Command::new("e2fsck").args(["-fn"]).arg(&path).output().expect("e2fsck");
        assert!(
            out.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("dumpe2fs").arg("-h").arg(&path).output().expect("dumpe2fs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Filesystem features:      ext_attr resize_inode dir_index sparse_super2 filetype extent 64bit flex_bg sparse_super large_file huge_file dir_nlink extra_isize"), "{text}");
        assert!(text.contains("Filesystem UUID:          <none>"), "{text}");
        assert!(text.contains("Inode count:              65536"), "{text}");
        assert!(text.contains("Last write time:          Thu Jan  1 00:00:01 1970"), "{text}");
        assert!(!text.contains("Filesystem created:"), "mkfs time must be unset: {text}");
        // Reopen through our manager.
        let fs = Filesystem::open(disk).unwrap();
        assert!(fs.lookup(ROOT, b"lost+found").unwrap().is_some());
        assert!(fs.lookup(ROOT, b"nothing").unwrap().is_none());
        fs.close().unwrap();
    }

    #[test]
    fn mkfs_is_reproducible() {
        let digest = || {
            let (_d, path, disk) = image(256 << 20);
            mkfs(disk, &MkfsOptions::default()).unwrap().close().unwrap();
            std::fs::read(path).unwrap()
        };
        assert!(digest() == digest(), "two mkfs runs differ");
    }
}
