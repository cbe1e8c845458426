//! A FUSE file system holding one file, `disk`, whose content is a [`BlockDevice`].

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, ReplyXattr, Request, WriteFlags,
};

use crate::block::BlockDevice;

/// Name of the file in the FUSE mount.
pub const DISK_NAME: &str = "disk";
const DISK_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(3600);
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// The FUSE side of the fuse-loop frontend.
pub struct DiskFs {
    dev: Arc<dyn BlockDevice>,
    id: String,
}

impl DiskFs {
    /// Serves `dev`; `id` names it in logs.
    pub fn new(dev: Arc<dyn BlockDevice>, id: &str) -> Self {
        DiskFs { dev, id: id.to_string() }
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, size, perm, nlink) = if ino == INodeNo::ROOT {
            (FileType::Directory, 0, 0o755, 2)
        } else {
            (FileType::RegularFile, self.dev.size(), if self.dev.read_only() { 0o400 } else { 0o600 }, 1)
        };
        FileAttr {
            ino,
            size,
            blocks: size / 512,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn fail(&self, op: &str, offset: u64, len: u64, e: &crate::Error) -> Errno {
        tracing::error!(device = %self.id, op, offset, len, error = %e, "I/O error");
        Errno::from_i32(e.errno())
    }
}

impl Filesystem for DiskFs {
    /// Lets the kernel keep many requests in flight (the loop device above submits up to its
    /// queue depth at once) and send large ones.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Without async direct I/O the kernel completes the loop device's requests one by one.
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        let _ = config.set_max_background(256);
        let _ = config.set_congestion_threshold(192);
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == DISK_NAME {
            reply.entry(&TTL, &self.attr(DISK_INO), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || ino == DISK_INO {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != DISK_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if write && self.dev.read_only() {
            reply.error(Errno::EROFS);
            return;
        }
        // The loop device above uses direct I/O; keep the FUSE page cache out of the way too.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let dev_size = self.dev.size();
        if offset >= dev_size {
            reply.data(&[]);
            return;
        }
        let len = (size as u64).min(dev_size - offset) as usize;
        let mut buf = vec![0u8; len];
        match self.dev.read_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(self.fail("read", offset, len as u64, &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.dev.write_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(self.fail("write", offset, data.len() as u64, &e)),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.dev.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("flush", 0, 0, &e)),
        }
    }

    /// No extended attributes; ENOSYS tells the kernel not to ask again.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    /// The loop device turns discards into `PUNCH_HOLE` and write-zeroes into `ZERO_RANGE`
    /// (or `PUNCH_HOLE`); both read as zeros afterwards, which is what a discard gives.
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) == 0
            || mode & FALLOC_FL_KEEP_SIZE == 0 && mode & FALLOC_FL_PUNCH_HOLE != 0
        {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        match self.dev.discard(offset, length) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("discard", offset, length, &e)),
        }
    }
}
