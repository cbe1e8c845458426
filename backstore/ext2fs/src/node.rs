//! Making, linking, changing and removing inodes: what unpacking a layer needs. The sequences
//! follow e2fsprogs' own populate code (`misc/create_inode.c`) and debugfs' `kill_file`.

use std::ffi::{c_char, c_int, c_void, CString};
use std::io::Read;

use crate::error::{check, Error, Result};
use crate::fs::{Filesystem, Ino};
use crate::sys;

/// What kind of inode to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (its data written with [`Filesystem::write_data`]).
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link to the target bytes.
    Symlink(Vec<u8>),
    /// A character device (major, minor).
    CharDevice(u32, u32),
    /// A block device (major, minor).
    BlockDevice(u32, u32),
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

impl Kind {
    fn type_bits(&self) -> u16 {
        (match self {
            Kind::Regular => sys::LINUX_S_IFREG,
            Kind::Directory => sys::LINUX_S_IFDIR,
            Kind::Symlink(_) => sys::LINUX_S_IFLNK,
            Kind::CharDevice(..) => sys::LINUX_S_IFCHR,
            Kind::BlockDevice(..) => sys::LINUX_S_IFBLK,
            Kind::Fifo => sys::LINUX_S_IFIFO,
            Kind::Socket => sys::LINUX_S_IFSOCK,
        }) as u16
    }

    fn dirent_type(&self) -> c_int {
        (match self {
            Kind::Regular => sys::EXT2_FT_REG_FILE,
            Kind::Directory => sys::EXT2_FT_DIR,
            Kind::Symlink(_) => sys::EXT2_FT_SYMLINK,
            Kind::CharDevice(..) => sys::EXT2_FT_CHRDEV,
            Kind::BlockDevice(..) => sys::EXT2_FT_BLKDEV,
            Kind::Fifo => sys::EXT2_FT_FIFO,
            Kind::Socket => sys::EXT2_FT_SOCK,
        }) as c_int
    }
}

/// A time as seconds since the epoch (any sign, 34 bits on disk) and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Time {
    /// Seconds.
    pub secs: i64,
    /// Nanoseconds.
    pub nsecs: u32,
}

impl Time {
    /// The on-disk pair: low 32 bits of the seconds, and the "extra" word with 2 epoch bits
    /// and the nanoseconds (as the kernel's `ext4_encode_extra_time`).
    fn encode(self) -> (u32, u32) {
        // The on-disk range: 1901-12-13 to 2446-05-10.
        let secs = self.secs.clamp(-(1 << 31), (1 << 34) - (1 << 31) - 1);
        let low = secs as i32;
        let epoch = ((secs - low as i64) >> 32) as u32 & 3;
        (low as u32, epoch | (self.nsecs.min(999_999_999) << 2))
    }

    fn decode(low: u32, extra: u32) -> Self {
        let secs = low as i32 as i64 + (((extra & 3) as i64) << 32);
        Time { secs, nsecs: extra >> 2 }
    }
}

/// Ownership, permissions and times of an inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits (incl. setuid/setgid/sticky), without the type.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (also used for the change time, so results are reproducible).
    pub mtime: Time,
    /// Access time.
    pub atime: Time,
}

fn cname(name: &[u8]) -> Result<CString> {
    if name.is_empty() || name.len() > 255 || name.contains(&b'/') {
        return Err(Error::InvalidArgument(format!("invalid file name {:?}", String::from_utf8_lossy(name))));
    }
    CString::new(name)
        .map_err(|_| Error::InvalidArgument(format!("file name {:?} has a NUL", String::from_utf8_lossy(name))))
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// A directory entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Name.
    pub name: Vec<u8>,
    /// Inode.
    pub ino: Ino,
}

/// The runs of `buf` that hold data, as (start, end) byte offsets: whole blocks of zeros are
/// holes; a trailing partial block is always data.
fn data_runs(buf: &[u8], bs: usize) -> Vec<(usize, usize)> {
    let zero = |c: &[u8]| c.len() == bs && is_zero(c);
    let mut runs = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let n = bs.min(buf.len() - off);
        if zero(&buf[off..off + n]) {
            off += n;
            continue;
        }
        let start = off;
        off += n;
        while off < buf.len() {
            let m = bs.min(buf.len() - off);
            if zero(&buf[off..off + m]) {
                break;
            }
            off += m;
        }
        runs.push((start, off));
    }
    runs
}

/// Reads `size` bytes of `data` (the content of `ino`) in pieces of up to `piece` bytes and
/// calls `write(file offset, bytes)` for each run of data blocks; zero blocks are skipped.
fn for_each_data_run(
    ino: Ino,
    data: &mut dyn Read,
    size: u64,
    bs: usize,
    piece: usize,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; (size as usize).min(piece)];
    let mut pos = 0u64;
    while pos < size {
        let want = ((size - pos) as usize).min(buf.len());
        data.read_exact(&mut buf[..want])
            .map_err(|e| Error::Disk { op: format!("read the content of inode {ino} at {pos}"), cause: e })?;
        for (start, end) in data_runs(&buf[..want], bs) {
            write(pos + start as u64, &buf[start..end])?;
        }
        pos += want as u64;
    }
    Ok(())
}

/// True if every byte is zero (word at a time).
fn is_zero(b: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: reinterpreting initialised bytes as u64 words is sound for any alignment
        // split align_to returns.
        unsafe { b.align_to::<u64>() }
    };
    head.iter().all(|&x| x == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&x| x == 0)
}

impl Filesystem {
    /// Adds `name` → `ino` to directory `dir`, growing the directory if it is full.
    pub fn link(&mut self, dir: Ino, name: &[u8], ino: Ino, dirent_type: c_int) -> Result<()> {
        let c = cname(name)?;
        // SAFETY: open filesystem, NUL-terminated name.
        let mut code = unsafe { sys::ext2fs_link(self.raw, dir, c.as_ptr(), ino, dirent_type) };
        if code == sys::EXT2_ET_DIR_NO_SPACE as sys::errcode_t {
            // SAFETY: as above; `dir` is a directory.
            check(unsafe { sys::ext2fs_expand_dir(self.raw, dir) }, || format!("expand directory {dir}"))?;
            // SAFETY: as above.
            code = unsafe { sys::ext2fs_link(self.raw, dir, c.as_ptr(), ino, dirent_type) };
        }
        check(code, || format!("link {:?} in directory {dir}", show(name)))
    }

    /// Makes `name` in directory `parent` as `kind` with `attrs`; returns the new inode.
    /// `name` must not exist.
    pub fn create(&mut self, parent: Ino, name: &[u8], kind: &Kind, attrs: &Attrs) -> Result<Ino> {
        let ino = if *kind == Kind::Directory {
            let c = cname(name)?;
            // SAFETY: open filesystem, NUL-terminated name.
            let mut code = unsafe { sys::ext2fs_mkdir(self.raw, parent, 0, c.as_ptr()) };
            if code == sys::EXT2_ET_DIR_NO_SPACE as sys::errcode_t {
                // SAFETY: as above.
                check(unsafe { sys::ext2fs_expand_dir(self.raw, parent) }, || format!("expand directory {parent}"))?;
                // SAFETY: as above.
                code = unsafe { sys::ext2fs_mkdir(self.raw, parent, 0, c.as_ptr()) };
            }
            check(code, || format!("mkdir {:?}", show(name)))?;
            self.lookup(parent, name)?.ok_or_else(|| Error::InvalidArgument(format!("{:?} vanished", show(name))))?
        } else if let Kind::Symlink(target) = kind {
            let c = cname(name)?;
            let t = CString::new(target.clone())
                .map_err(|_| Error::InvalidArgument(format!("symlink target of {:?} has a NUL", show(name))))?;
            // SAFETY: open filesystem, NUL-terminated strings.
            let mut code = unsafe { sys::ext2fs_symlink(self.raw, parent, 0, c.as_ptr(), t.as_ptr()) };
            if code == sys::EXT2_ET_DIR_NO_SPACE as sys::errcode_t {
                // SAFETY: as above.
                check(unsafe { sys::ext2fs_expand_dir(self.raw, parent) }, || format!("expand directory {parent}"))?;
                // SAFETY: as above.
                code = unsafe { sys::ext2fs_symlink(self.raw, parent, 0, c.as_ptr(), t.as_ptr()) };
            }
            check(code, || format!("symlink {:?}", show(name)))?;
            self.lookup(parent, name)?.ok_or_else(|| Error::InvalidArgument(format!("{:?} vanished", show(name))))?
        } else {
            self.create_plain(parent, name, kind)?
        };
        self.set_attrs(ino, attrs)?;
        Ok(ino)
    }

    /// A regular file or special inode (create_inode.c's do_write_internal / do_mknod_internal).
    fn create_plain(&mut self, parent: Ino, name: &[u8], kind: &Kind) -> Result<Ino> {
        let mut ino: Ino = 0;
        let mode = kind.type_bits() as c_int | 0o644;
        // SAFETY: open filesystem; out pointer valid.
        check(unsafe { sys::ext2fs_new_inode(self.raw, parent, mode, std::ptr::null_mut(), &mut ino) }, || {
            format!("allocate an inode for {:?}", show(name))
        })?;
        self.link(parent, name, ino, kind.dirent_type())?;
        // SAFETY: `ino` was just allocated.
        unsafe { sys::ext2fs_inode_alloc_stats2(self.raw, ino, 1, 0) };
        let mut inode = sys::ext2_inode { i_mode: mode as u16, i_links_count: 1, ..Default::default() };
        match *kind {
            Kind::CharDevice(major, minor) | Kind::BlockDevice(major, minor) => {
                // The kernel's old and new device encodings (ext4_inode old_encode_dev / new_encode_dev).
                if major < 256 && minor < 256 {
                    inode.i_block[0] = major * 256 + minor;
                } else {
                    inode.i_block[1] = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                }
            }
            Kind::Regular if self.has_extents() => {
                let mut handle: sys::ext2_extent_handle_t = std::ptr::null_mut();
                // SAFETY: initialises an empty extent tree in `inode` (sets EXTENTS_FL).
                check(unsafe { sys::ext2fs_extent_open2(self.raw, ino, &mut inode, &mut handle) }, || {
                    format!("start the extent tree of {:?}", show(name))
                })?;
                // SAFETY: the handle was just opened.
                unsafe { sys::ext2fs_extent_free(handle) };
            }
            _ => {}
        }
        // SAFETY: open filesystem, an inode buffer.
        check(unsafe { sys::ext2fs_write_new_inode(self.raw, ino, &mut inode) }, || {
            format!("write the inode of {:?}", show(name))
        })?;
        Ok(ino)
    }

    fn has_extents(&self) -> bool {
        self.superblock().s_feature_incompat & sys::EXT3_FEATURE_INCOMPAT_EXTENTS != 0
    }

    /// Sets permissions, owner and times of `ino` (the type bits are kept).
    pub fn set_attrs(&mut self, ino: Ino, a: &Attrs) -> Result<()> {
        let mut inode = self.read_inode(ino)?;
        inode.i_mode = (inode.i_mode & sys::LINUX_S_IFMT as u16) | (a.perm & 0o7777);
        inode.i_uid = a.uid as u16;
        inode.i_gid = a.gid as u16;
        // Writing a union field is safe; the Linux variant is the one in use.
        inode.osd2.linux2.l_i_uid_high = (a.uid >> 16) as u16;
        inode.osd2.linux2.l_i_gid_high = (a.gid >> 16) as u16;
        let (m, mx) = a.mtime.encode();
        let (at, ax) = a.atime.encode();
        inode.i_mtime = m;
        inode.i_ctime = m;
        inode.i_atime = at;
        if inode.i_extra_isize >= 24 {
            inode.i_mtime_extra = mx;
            inode.i_ctime_extra = mx;
            inode.i_atime_extra = ax;
            inode.i_crtime = m;
            inode.i_crtime_extra = mx;
        }
        self.write_inode(ino, &inode)
    }

    /// The modification time of `ino`.
    pub fn mtime(&self, ino: Ino) -> Result<Time> {
        let i = self.read_inode(ino)?;
        Ok(Time::decode(i.i_mtime, if i.i_extra_isize >= 24 { i.i_mtime_extra } else { 0 }))
    }

    /// Writes `size` bytes from `data` as the content of the new regular file `ino`. Runs of
    /// whole zero blocks become holes.
    ///
    /// On extent-mapped files the data bypasses libext2fs's one-block file buffer: each run of
    /// data blocks is allocated at once (`ext2fs_fallocate`) and written to the disk in large
    /// writes at the blocks the extent tree maps it to.
    pub fn write_data(&mut self, ino: Ino, data: &mut dyn Read, size: u64) -> Result<()> {
        let extents = self.read_inode(ino)?.i_flags & sys::EXT4_EXTENTS_FL != 0;
        if !extents {
            return self.write_data_buffered(ino, data, size);
        }
        let bs = self.block_size() as usize;
        for_each_data_run(ino, data, size, bs, 4 << 20, |at, bytes| self.write_run(ino, at, bytes))?;
        let mut inode = self.read_inode(ino)?;
        let size = i64::try_from(size).map_err(|_| Error::InvalidArgument(format!("file size {size} is too large")))?;
        // SAFETY: `inode` is a valid inode buffer (its small prefix is what the setter uses).
        let code = unsafe { sys::ext2fs_inode_size_set(self.raw, &mut inode as *mut _ as *mut sys::ext2_inode, size) };
        check(code, || format!("set the size of inode {ino}"))?;
        self.write_inode(ino, &inode)
    }

    /// Allocates the blocks of `bytes` at file offset `at` (block aligned) and writes them.
    fn write_run(&mut self, ino: Ino, at: u64, bytes: &[u8]) -> Result<()> {
        let bs = self.block_size() as u64;
        let first = at / bs;
        let count = (bytes.len() as u64).div_ceil(bs);
        // SAFETY: open filesystem; a null inode makes libext2fs read and write it itself.
        let code = unsafe {
            sys::ext2fs_fallocate(
                self.raw,
                sys::EXT2_FALLOCATE_FORCE_INIT as c_int,
                ino,
                std::ptr::null_mut(),
                !0,
                first,
                count,
            )
        };
        check(code, || format!("allocate {count} blocks of inode {ino}"))?;
        let mut handle: sys::ext2_extent_handle_t = std::ptr::null_mut();
        // SAFETY: open filesystem; the handle is freed below on every path.
        check(unsafe { sys::ext2fs_extent_open2(self.raw, ino, std::ptr::null_mut(), &mut handle) }, || {
            format!("open the extents of inode {ino}")
        })?;
        let r = self.write_mapped(handle, ino, first, count, bytes);
        // SAFETY: opened above.
        unsafe { sys::ext2fs_extent_free(handle) };
        r
    }

    fn write_mapped(
        &mut self,
        handle: sys::ext2_extent_handle_t,
        ino: Ino,
        first: u64,
        count: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let bs = self.block_size() as u64;
        let mut ext = sys::ext2fs_extent::default();
        // SAFETY: a valid handle and an extent buffer.
        check(unsafe { sys::ext2fs_extent_goto2(handle, 0, first) }, || format!("find block {first} of inode {ino}"))?;
        // SAFETY: as above.
        check(unsafe { sys::ext2fs_extent_get(handle, sys::EXT2_EXTENT_CURRENT as c_int, &mut ext) }, || {
            format!("read the extent of block {first} of inode {ino}")
        })?;
        let mut lblk = first;
        while lblk < first + count {
            if ext.e_lblk > lblk || ext.e_lblk + ext.e_len as u64 <= lblk {
                return Err(Error::InvalidArgument(format!(
                    "block {lblk} of inode {ino} is not mapped after allocation"
                )));
            }
            let n = (ext.e_lblk + ext.e_len as u64 - lblk).min(first + count - lblk);
            let pblk = ext.e_pblk + (lblk - ext.e_lblk);
            let from = ((lblk - first) * bs) as usize;
            let to = (((lblk - first + n) * bs) as usize).min(bytes.len());
            let chunk = &bytes[from..to];
            let whole = chunk.len() / bs as usize * bs as usize;
            if whole > 0 {
                self.write_blocks(pblk, &chunk[..whole])?;
            }
            if whole < chunk.len() {
                let mut last = vec![0u8; bs as usize];
                last[..chunk.len() - whole].copy_from_slice(&chunk[whole..]);
                self.write_blocks(pblk + (whole as u64 / bs), &last)?;
            }
            lblk += n;
            if lblk < first + count {
                // SAFETY: as above.
                let code = unsafe { sys::ext2fs_extent_get(handle, sys::EXT2_EXTENT_NEXT_LEAF as c_int, &mut ext) };
                check(code, || format!("walk the extents of inode {ino}"))?;
            }
        }
        Ok(())
    }

    /// Writes whole blocks at physical block `pblk` through the I/O channel (whose cache then
    /// stays coherent).
    fn write_blocks(&mut self, pblk: u64, bytes: &[u8]) -> Result<()> {
        let bs = self.block_size() as usize;
        for (i, chunk) in bytes.chunks(bs << 14).enumerate() {
            let at = pblk + (i * (1 << 14)) as u64;
            let blocks = (chunk.len() / bs) as c_int;
            // SAFETY: open filesystem; `chunk` holds whole blocks (callers pad) and lives
            // through the call.
            let code =
                unsafe { sys::io_channel_write_blk64((*self.raw).io, at, blocks, chunk.as_ptr() as *const c_void) };
            check(code, || format!("write blocks at {at}"))?;
        }
        Ok(())
    }

    /// Writes through libext2fs's file interface (block-mapped files).
    fn write_data_buffered(&mut self, ino: Ino, data: &mut dyn Read, size: u64) -> Result<()> {
        let mut file: sys::ext2_file_t = std::ptr::null_mut();
        // SAFETY: open filesystem, out pointer.
        check(unsafe { sys::ext2fs_file_open(self.raw, ino, sys::EXT2_FILE_WRITE as c_int, &mut file) }, || {
            format!("open inode {ino} for writing")
        })?;
        let r = self.write_file(file, ino, data, size);
        // SAFETY: the file was opened above and is closed once.
        let closed = check(unsafe { sys::ext2fs_file_close(file) }, || format!("close inode {ino}"));
        r.and(closed)
    }

    fn write_file(&mut self, file: sys::ext2_file_t, ino: Ino, data: &mut dyn Read, size: u64) -> Result<()> {
        let bs = self.block_size() as usize;
        for_each_data_run(ino, data, size, bs, 1 << 20, |at, bytes| {
            // SAFETY: open file; seek then write from the caller's buffer with its length.
            unsafe {
                check(sys::ext2fs_file_llseek(file, at, 0, std::ptr::null_mut()), || {
                    format!("seek inode {ino} to {at}")
                })?;
                let mut written: u32 = 0;
                check(
                    sys::ext2fs_file_write(file, bytes.as_ptr() as *const c_void, bytes.len() as u32, &mut written),
                    || format!("write inode {ino} at {at}"),
                )?;
                if written as usize != bytes.len() {
                    return Err(Error::InvalidArgument(format!("short write to inode {ino} at {at}")));
                }
            }
            Ok(())
        })?;
        let size = i64::try_from(size).map_err(|_| Error::InvalidArgument(format!("file size {size} is too large")))?;
        // SAFETY: open file.
        check(unsafe { sys::ext2fs_file_set_size2(file, size) }, || format!("set the size of inode {ino}"))
    }

    /// Adds a hard link `name` in `dir` to the existing non-directory `ino`.
    pub fn hard_link(&mut self, dir: Ino, name: &[u8], ino: Ino) -> Result<()> {
        let mut inode = self.read_inode(ino)?;
        let ft = match (inode.i_mode as u32) & sys::LINUX_S_IFMT {
            sys::LINUX_S_IFREG => sys::EXT2_FT_REG_FILE,
            sys::LINUX_S_IFLNK => sys::EXT2_FT_SYMLINK,
            sys::LINUX_S_IFCHR => sys::EXT2_FT_CHRDEV,
            sys::LINUX_S_IFBLK => sys::EXT2_FT_BLKDEV,
            sys::LINUX_S_IFIFO => sys::EXT2_FT_FIFO,
            sys::LINUX_S_IFSOCK => sys::EXT2_FT_SOCK,
            _ => return Err(Error::InvalidArgument(format!("cannot hard-link {:?} to a directory", show(name)))),
        };
        if inode.i_links_count == u16::MAX {
            return Err(Error::InvalidArgument(format!("inode {ino} has too many links for {:?}", show(name))));
        }
        self.link(dir, name, ino, ft as c_int)?;
        inode.i_links_count += 1;
        self.write_inode(ino, &inode)
    }

    /// Sets extended attribute `key` (e.g. `security.capability`, `user.x`) of `ino`.
    pub fn set_xattr(&mut self, ino: Ino, key: &str, value: &[u8]) -> Result<()> {
        let k = CString::new(key).map_err(|_| Error::InvalidArgument(format!("xattr name {key:?} has a NUL")))?;
        let mut h: *mut sys::ext2_xattr_handle = std::ptr::null_mut();
        // SAFETY: open filesystem; the handle is closed on every path below.
        unsafe {
            check(sys::ext2fs_xattrs_open(self.raw, ino, &mut h), || format!("open the xattrs of inode {ino}"))?;
            let r = check(sys::ext2fs_xattrs_read(h), || format!("read the xattrs of inode {ino}")).and_then(|()| {
                check(sys::ext2fs_xattr_set(h, k.as_ptr(), value.as_ptr() as *const c_void, value.len()), || {
                    format!("set xattr {key} of inode {ino}")
                })
            });
            let c = check(sys::ext2fs_xattrs_close(&mut h), || format!("write the xattrs of inode {ino}"));
            r.and(c)
        }
    }

    /// The extended attributes of `ino`, by name.
    pub fn xattrs(&self, ino: Ino) -> Result<Vec<(String, Vec<u8>)>> {
        unsafe extern "C" fn collect(name: *mut c_char, value: *mut c_char, len: usize, data: *mut c_void) -> c_int {
            // SAFETY: libext2fs passes a NUL-terminated name, `len` bytes of value, and our Vec.
            unsafe {
                let out = &mut *(data as *mut Vec<(String, Vec<u8>)>);
                let n = std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned();
                let v =
                    if len == 0 { Vec::new() } else { std::slice::from_raw_parts(value as *const u8, len).to_vec() };
                out.push((n, v));
            }
            0
        }
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut h: *mut sys::ext2_xattr_handle = std::ptr::null_mut();
        // SAFETY: as in set_xattr; `out` outlives the iteration.
        unsafe {
            check(sys::ext2fs_xattrs_open(self.raw, ino, &mut h), || format!("open the xattrs of inode {ino}"))?;
            let r = check(sys::ext2fs_xattrs_read(h), || format!("read the xattrs of inode {ino}")).and_then(|()| {
                check(sys::ext2fs_xattrs_iterate(h, Some(collect), &mut out as *mut _ as *mut c_void), || {
                    format!("list the xattrs of inode {ino}")
                })
            });
            let _ = sys::ext2fs_xattrs_close(&mut h);
            r?;
        }
        Ok(out)
    }

    /// The entries of directory `dir`, without `.` and `..`.
    pub fn entries(&self, dir: Ino) -> Result<Vec<Entry>> {
        unsafe extern "C" fn each(
            _dir: Ino,
            _entry: c_int,
            dirent: *mut sys::ext2_dir_entry,
            _offset: c_int,
            _blocksize: c_int,
            _buf: *mut c_char,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: libext2fs passes a valid entry and our Vec.
            unsafe {
                let d = &*dirent;
                let len = (d.name_len & 0xff) as usize;
                let name = std::slice::from_raw_parts(d.name.as_ptr() as *const u8, len);
                if d.inode != 0 && name != b"." && name != b".." {
                    (*(data as *mut Vec<Entry>)).push(Entry { name: name.to_vec(), ino: d.inode });
                }
            }
            0
        }
        let mut out: Vec<Entry> = Vec::new();
        let data = &mut out as *mut Vec<Entry> as *mut c_void;
        // SAFETY: open filesystem; `out` outlives the iteration.
        let code = unsafe { sys::ext2fs_dir_iterate2(self.raw, dir, 0, std::ptr::null_mut(), Some(each), data) };
        check(code, || format!("list directory {dir}"))?;
        Ok(out)
    }

    /// The target of symlink `ino`.
    pub fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        let mut inode = self.read_inode(ino)?;
        let size = inode.i_size as usize;
        if (inode.i_mode as u32) & sys::LINUX_S_IFMT != sys::LINUX_S_IFLNK || size > 4096 {
            return Err(Error::InvalidArgument(format!("inode {ino} is not a symlink")));
        }
        let small = &mut inode as *mut sys::ext2_inode_large as *mut sys::ext2_inode;
        // SAFETY: `small` points to the inode read above.
        if inode.i_flags & sys::EXT4_INLINE_DATA_FL == 0 && unsafe { sys::ext2fs_is_fast_symlink(small) } != 0 {
            let bytes: Vec<u8> = inode.i_block.iter().flat_map(|w| w.to_le_bytes()).collect();
            return Ok(bytes[..size.min(bytes.len())].to_vec());
        }
        let mut buf = vec![0u8; size];
        let mut file: sys::ext2_file_t = std::ptr::null_mut();
        // SAFETY: open filesystem; the file is closed below; reads into our buffer of `size`.
        unsafe {
            check(sys::ext2fs_file_open(self.raw, ino, 0, &mut file), || format!("open symlink {ino}"))?;
            let mut got: u32 = 0;
            let r = check(sys::ext2fs_file_read(file, buf.as_mut_ptr() as *mut c_void, size as u32, &mut got), || {
                format!("read symlink {ino}")
            });
            let _ = sys::ext2fs_file_close(file);
            r?;
            buf.truncate(got as usize);
        }
        Ok(buf)
    }

    /// True if `ino` is a directory.
    pub fn is_dir(&self, ino: Ino) -> Result<bool> {
        Ok((self.read_inode(ino)?.i_mode as u32) & sys::LINUX_S_IFMT == sys::LINUX_S_IFDIR)
    }

    /// Removes `name` from directory `dir`, and everything below it if it is a directory.
    pub fn remove(&mut self, dir: Ino, name: &[u8]) -> Result<()> {
        let Some(ino) = self.lookup(dir, name)? else { return Ok(()) };
        let is_dir = self.is_dir(ino)?;
        if is_dir {
            for e in self.entries(ino)? {
                self.remove(ino, &e.name)?;
            }
        }
        let c = cname(name)?;
        // SAFETY: open filesystem, NUL-terminated name.
        check(unsafe { sys::ext2fs_unlink(self.raw, dir, c.as_ptr(), ino, 0) }, || format!("unlink {:?}", show(name)))?;
        if is_dir {
            // The child's ".." no longer counts against the parent.
            let mut parent = self.read_inode(dir)?;
            if parent.i_links_count > 2 {
                parent.i_links_count -= 1;
                self.write_inode(dir, &parent)?;
            }
        }
        self.release(ino, is_dir)
    }

    /// Drops one link of `ino`; frees it (blocks, xattrs, inode) when no link is left.
    fn release(&mut self, ino: Ino, is_dir: bool) -> Result<()> {
        let mut inode = self.read_inode(ino)?;
        inode.i_links_count = if is_dir { 0 } else { inode.i_links_count.saturating_sub(1) };
        if inode.i_links_count > 0 {
            return self.write_inode(ino, &inode);
        }
        // SAFETY: open filesystem; `inode` is the on-disk inode of `ino`, now unreferenced.
        unsafe {
            let small = &mut inode as *mut sys::ext2_inode_large as *mut sys::ext2_inode;
            if sys::ext2fs_inode_has_valid_blocks2(self.raw, small) != 0 {
                check(sys::ext2fs_punch(self.raw, ino, small, std::ptr::null_mut(), 0, !0), || {
                    format!("free the blocks of inode {ino}")
                })?;
            }
            if inode.i_file_acl != 0 {
                check(sys::ext2fs_free_ext_attr(self.raw, ino, &mut inode), || {
                    format!("free the xattr block of inode {ino}")
                })?;
            }
            inode.i_dtime = (*self.raw).now as u32;
            self.write_inode(ino, &inode)?;
            sys::ext2fs_inode_alloc_stats2(self.raw, ino, -1, is_dir as c_int);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::ROOT;
    use crate::mkfs::{mkfs, MkfsOptions};
    use std::process::Command;
    use std::sync::Arc;

    fn debugfs(img: &std::path::Path, cmd: &str) -> String {
        let out = Command::new("debugfs").arg("-R").arg(cmd).arg(img).output().expect("debugfs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn every_kind_of_node_round_trips_through_e2fsck_and_debugfs() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&img).unwrap();
        f.set_len(512 << 20).unwrap();
        let mut fs = mkfs(Arc::new(f), &MkfsOptions::default()).unwrap();
        let a = |perm| Attrs {
            perm,
            uid: 70000,
            gid: 5,
            mtime: Time { secs: -86400 * 365, nsecs: 5 },
            atime: Time { secs: 1 << 33, nsecs: 0 },
        };
        let d = fs.create(ROOT, b"d", &Kind::Directory, &a(0o750)).unwrap();
        let f1 = fs.create(d, b"f", &Kind::Regular, &a(0o4755)).unwrap();
        let mut content = vec![0u8; 3 << 20];
        content[..5].copy_from_slice(b"hello");
        content[(2 << 20) + 7] = 9; // a hole between two data runs
        fs.write_data(f1, &mut &content[..], content.len() as u64).unwrap();
        fs.create(d, b"short", &Kind::Symlink(b"f".to_vec()), &a(0o777)).unwrap();
        let long = vec![b'x'; 300];
        fs.create(d, b"long", &Kind::Symlink(long.clone()), &a(0o777)).unwrap();
        fs.create(d, b"null", &Kind::CharDevice(1, 3), &a(0o666)).unwrap();
        fs.create(d, b"big", &Kind::BlockDevice(259, 70000), &a(0o660)).unwrap();
        fs.create(d, b"p", &Kind::Fifo, &a(0o600)).unwrap();
        fs.hard_link(ROOT, b"f-link", f1).unwrap();
        fs.set_xattr(f1, "security.capability", &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        fs.set_xattr(f1, "user.big", &vec![7u8; 3000]).unwrap();
        assert_eq!(fs.xattrs(f1).unwrap().len(), 2);
        assert_eq!(fs.mtime(f1).unwrap(), Time { secs: -86400 * 365, nsecs: 5 });
        // many entries: the directory grows
        let many = fs.create(ROOT, b"many", &Kind::Directory, &a(0o755)).unwrap();
        for i in 0..600 {
            fs.create(many, format!("file-with-a-long-name-{i:04}").as_bytes(), &Kind::Regular, &a(0o644)).unwrap();
        }
        // removal of a tree and of one link of two
        let gone = fs.create(ROOT, b"gone", &Kind::Directory, &a(0o755)).unwrap();
        let g = fs.create(gone, b"x", &Kind::Regular, &a(0o644)).unwrap();
        fs.write_data(g, &mut &[1u8; 10000][..], 10000).unwrap();
        fs.set_xattr(g, "user.big", &vec![7u8; 3000]).unwrap();
        fs.create(gone, b"sub", &Kind::Directory, &a(0o755)).unwrap();
        fs.remove(ROOT, b"gone").unwrap();
        fs.remove(ROOT, b"f-link").unwrap();
        fs.close().unwrap();

        let out = Command::new("e2fsck").arg("-fn").arg(&img).output().unwrap();
        assert!(out.status.success(), "e2fsck: {}", String::from_utf8_lossy(&out.stdout));
        let stat = debugfs(&img, "stat /d/f");
        assert!(stat.contains("Mode:  04755"), "{stat}");
        assert!(stat.contains("User: 70000   Group:     5"), "{stat}");
        assert!(stat.contains("Links: 1"), "{stat}");
        let dumped = dir.path().join("out");
        debugfs(&img, &format!("dump /d/f {}", dumped.display()));
        assert!(std::fs::read(&dumped).unwrap() == content, "file content differs");
        assert!(debugfs(&img, "stat /d/long").contains("Size: 300"));
        let fs =
            crate::Filesystem::open(Arc::new(std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap()))
                .unwrap();
        let d = fs.lookup(ROOT, b"d").unwrap().unwrap();
        assert_eq!(fs.read_link(fs.lookup(d, b"long").unwrap().unwrap()).unwrap(), long);
        assert_eq!(fs.read_link(fs.lookup(d, b"short").unwrap().unwrap()).unwrap(), b"f");
        fs.close().unwrap();
        assert!(
            debugfs(&img, "stat /d/big").contains("Device major/minor number: 259:70000"),
            "{}",
            debugfs(&img, "stat /d/big")
        );
        assert!(debugfs(&img, "ls /").contains("many") && !debugfs(&img, "ls /").contains("gone"));
        assert!(debugfs(&img, "ea_get /d/f user.big").contains("user.big (3000) = 07 07 07"));
    }

    #[test]
    fn times_encode_like_the_kernel() {
        for secs in [0i64, -1, 1 << 31, (1 << 32) + 5, -(1 << 31), 15_000_000_000] {
            let t = Time { secs, nsecs: 123 };
            let (lo, ex) = t.encode();
            assert_eq!(Time::decode(lo, ex), t, "{secs}");
        }
        let (lo, ex) = Time { secs: i64::MAX, nsecs: 0 }.encode();
        assert_eq!(Time::decode(lo, ex).secs, (1 << 34) - (1 << 31) - 1, "clamped to the last second");
    }
}
