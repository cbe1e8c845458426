//! An open filesystem.

use std::ffi::CString;
use std::sync::{Arc, Once};

use crate::disk::Disk;
use crate::error::{check, Error, Result};
use crate::io_manager::{self, Registration};
use crate::sys;

/// An inode number.
pub type Ino = sys::ext2_ino_t;

/// The root directory's inode.
pub const ROOT: Ino = sys::EXT2_ROOT_INO as Ino;

/// The time libext2fs stamps on the superblock at each write and on inodes created without
/// one. 0 would mean "read the clock" to libext2fs, so this is 1 s after the epoch: the same
/// input gives the same bytes. (The reference's forked libext2fs writes 0.)
pub const FIXED_NOW: i64 = 1;

/// Registers libext2fs's error messages once.
pub(crate) fn init_library() {
    static ONCE: Once = Once::new();
    // SAFETY: registers a static table; idempotent behind Once.
    ONCE.call_once(|| unsafe { sys::initialize_ext2_error_table() });
}

/// An ext2/3/4 filesystem opened read-write on a [`Disk`]. Not `Sync`: libext2fs is single
/// threaded per filesystem.
pub struct Filesystem {
    pub(crate) raw: sys::ext2_filsys,
    _registration: Registration,
}

// SAFETY: the handle is owned exclusively by this value and libext2fs keeps no thread-local
// state for it; moving it to another thread is fine (sharing is not: no Sync).
unsafe impl Send for Filesystem {}

impl Filesystem {
    /// Opens the filesystem on `disk` for writing.
    pub fn open(disk: Arc<dyn Disk>) -> Result<Self> {
        Self::open_mode(disk, true)
    }

    /// Opens the filesystem on `disk` read-only: nothing is ever written to the disk.
    pub fn open_read_only(disk: Arc<dyn Disk>) -> Result<Self> {
        Self::open_mode(disk, false)
    }

    fn open_mode(disk: Arc<dyn Disk>, rw: bool) -> Result<Self> {
        init_library();
        let reg = io_manager::register(disk);
        let mut raw: sys::ext2_filsys = std::ptr::null_mut();
        let flags = (if rw { sys::EXT2_FLAG_RW } else { 0 } | sys::EXT2_FLAG_64BITS) as i32;
        // SAFETY: valid NUL-terminated name, our static manager, and an out pointer.
        let code = unsafe {
            sys::ext2fs_open2(reg.name.as_ptr(), std::ptr::null(), flags, 0, 0, io_manager::manager(), &mut raw)
        };
        check(code, || "open the filesystem".into())?;
        let mut fs = Filesystem { raw, _registration: reg };
        fs.set_now(FIXED_NOW);
        if rw {
            // (a reader needs no allocation bitmaps: not reading them saves a pass over the disk)
            // SAFETY: `raw` is an open filesystem.
            check(unsafe { sys::ext2fs_read_bitmaps(fs.raw) }, || "read the bitmaps".into())?;
        }
        Ok(fs)
    }

    /// Wraps a filesystem handle made by `ext2fs_initialize` on `reg`.
    pub(crate) fn from_raw(raw: sys::ext2_filsys, reg: Registration) -> Self {
        let mut fs = Filesystem { raw, _registration: reg };
        fs.set_now(FIXED_NOW);
        fs
    }

    /// The superblock.
    pub fn superblock(&self) -> &sys::ext2_super_block {
        // SAFETY: an open filesystem always has its superblock loaded.
        unsafe { &*(*self.raw).super_ }
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        // SAFETY: open filesystem.
        unsafe { (*self.raw).blocksize }
    }

    /// Sets the time libext2fs stamps on what it creates and on the superblock (0: the clock).
    pub fn set_now(&mut self, secs: i64) {
        // SAFETY: open filesystem, plain field.
        unsafe { (*self.raw).now = secs as _ };
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Ino>> {
        let mut ino: Ino = 0;
        // SAFETY: `name` is passed with its length (no NUL needed); out pointer valid.
        let code = unsafe {
            sys::ext2fs_lookup(
                self.raw,
                dir,
                name.as_ptr() as *const _,
                name.len() as i32,
                std::ptr::null_mut(),
                &mut ino,
            )
        };
        if code == sys::EXT2_ET_FILE_NOT_FOUND as sys::errcode_t {
            return Ok(None);
        }
        check(code, || format!("look up {:?} in inode {dir}", String::from_utf8_lossy(name)))?;
        Ok(Some(ino))
    }

    /// Reads inode `ino` (the large on-disk form).
    pub fn read_inode(&self, ino: Ino) -> Result<sys::ext2_inode_large> {
        let mut inode = sys::ext2_inode_large::default();
        // SAFETY: the buffer is an ext2_inode_large and its size is passed.
        let code = unsafe {
            sys::ext2fs_read_inode_full(
                self.raw,
                ino,
                &mut inode as *mut _ as *mut sys::ext2_inode,
                std::mem::size_of::<sys::ext2_inode_large>() as i32,
            )
        };
        check(code, || format!("read inode {ino}"))?;
        Ok(inode)
    }

    /// Writes inode `ino`.
    pub fn write_inode(&mut self, ino: Ino, inode: &sys::ext2_inode_large) -> Result<()> {
        let mut copy = *inode;
        // SAFETY: as in read_inode.
        let code = unsafe {
            sys::ext2fs_write_inode_full(
                self.raw,
                ino,
                &mut copy as *mut _ as *mut sys::ext2_inode,
                std::mem::size_of::<sys::ext2_inode_large>() as i32,
            )
        };
        check(code, || format!("write inode {ino}"))
    }

    /// Makes directory `name` in `parent` (mode from the filesystem's umask); returns its inode.
    pub fn mkdir(&mut self, parent: Ino, name: &str) -> Result<Ino> {
        let cname = CString::new(name).map_err(|_| Error::InvalidArgument(format!("name {name:?} contains NUL")))?;
        // SAFETY: open filesystem, NUL-terminated name.
        let mut code = unsafe { sys::ext2fs_mkdir(self.raw, parent, 0, cname.as_ptr()) };
        if code == sys::EXT2_ET_DIR_NO_SPACE as sys::errcode_t {
            // SAFETY: open filesystem, a directory inode.
            check(unsafe { sys::ext2fs_expand_dir(self.raw, parent) }, || format!("expand directory {parent}"))?;
            // SAFETY: as above.
            code = unsafe { sys::ext2fs_mkdir(self.raw, parent, 0, cname.as_ptr()) };
        }
        check(code, || format!("mkdir {name:?} in inode {parent}"))?;
        self.lookup(parent, name.as_bytes())?
            .ok_or_else(|| Error::InvalidArgument(format!("{name:?} missing right after mkdir")))
    }

    /// Writes everything out and closes the filesystem.
    pub fn close(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        let mut handle = raw;
        // SAFETY: `raw` is open; ext2fs_close_free flushes, frees and nulls the handle.
        check(unsafe { sys::ext2fs_close_free(&mut handle) }, || "close the filesystem".into())
    }
}

impl Drop for Filesystem {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // Dropped without close(): discard unsaved state rather than half-write it.
            // SAFETY: `raw` is open and not used afterwards.
            unsafe { sys::ext2fs_free(self.raw) };
            self.raw = std::ptr::null_mut();
        }
    }
}
