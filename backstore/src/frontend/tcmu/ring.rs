//! The TCMU mailbox and command ring of one device, mapped from its `/dev/uioK`
//! (`include/uapi/linux/target_core_user.h`, mailbox version 2).
//!
//! The kernel appends entries at `cmd_head`; userspace completes them by writing the response
//! into the entry at `cmd_tail`, advancing `cmd_tail` past it and writing to the uio file. With
//! out-of-order completion (`TCMU_MAILBOX_FLAG_CAP_OOOC`) a response names its command by id,
//! so responses fill the oldest command slots in whatever order commands finish.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::{Error, Result};

const MAILBOX_VERSION: u16 = 2;
const FLAG_CAP_OOOC: u16 = 1 << 0;
const OFF_VERSION: usize = 0;
const OFF_FLAGS: usize = 2;
const OFF_CMDR_OFF: usize = 4;
const OFF_CMDR_SIZE: usize = 8;
const OFF_CMD_HEAD: usize = 12;
const OFF_CMD_TAIL: usize = 64;

const OP_MASK: u32 = 0x7;
const OP_CMD: u32 = 1;

// Entry layout: header (len_op u32, cmd_id u16, kflags u8, uflags u8), then either the request
// (iov_cnt, iov_bidi_cnt, iov_dif_cnt u32; cdb_off u64 at 24; iovecs at 48) or the response
// (scsi_status u8 at 8; read_len u32 at 12; sense buffer at 16).
const ENT_CMD_ID: usize = 4;
const ENT_UFLAGS: usize = 7;
const REQ_IOV_CNT: usize = 8;
const REQ_CDB_OFF: usize = 24;
const REQ_IOV: usize = 48;
const RSP_STATUS: usize = 8;
const RSP_SENSE: usize = 16;
const SENSE_BUFFERSIZE: usize = 96;
/// Bytes of CDB copied out of the ring (covers 6- to 32-byte CDBs).
const CDB_COPY: usize = 32;

/// A SCSI command taken off the ring.
#[derive(Debug)]
pub struct Command {
    /// The kernel's id, echoed in the response.
    pub id: u16,
    /// The CDB (with trailing bytes beyond its length, up to 32).
    pub cdb: Vec<u8>,
    /// The data buffer: (offset in the mapping, length) pairs.
    pub iovs: Vec<(usize, usize)>,
}

/// What a command came to.
#[derive(Debug)]
pub struct Response {
    /// The command's id.
    pub id: u16,
    /// SCSI status (0 = GOOD).
    pub status: u8,
    /// Sense data for CHECK CONDITION.
    pub sense: Vec<u8>,
}

/// An entry of the ring.
pub enum Entry {
    /// Padding or a task-management notification: nothing to answer.
    Skip,
    /// A command to execute.
    Command(Command),
}

/// The mapped mailbox, command ring and data area of one TCMU device.
pub struct Ring {
    file: File,
    map: MmapRaw,
    name: String,
    cmdr_off: usize,
    cmdr_size: usize,
}

impl Ring {
    /// Opens `/dev/uioK` and maps its `size` bytes; checks the mailbox version and capabilities.
    pub fn open(dev: &Path, size: usize) -> Result<Self> {
        let name = dev.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(dev)
            .map_err(|e| Error::io(&name, "open", e))?;
        let map = MmapOptions::new().len(size).map_raw(&file).map_err(|e| Error::io(&name, "map the ring", e))?;
        let mut ring = Ring { file, map, name, cmdr_off: 0, cmdr_size: 0 };
        let version = ring.read_u16(OFF_VERSION);
        let flags = ring.read_u16(OFF_FLAGS);
        if version != MAILBOX_VERSION {
            return Err(Error::format(&ring.name, "TCMU mailbox", format!("version {version}, expected 2")));
        }
        if flags & FLAG_CAP_OOOC == 0 {
            return Err(Error::format(&ring.name, "TCMU mailbox", "the kernel lacks out-of-order completion"));
        }
        ring.cmdr_off = ring.read_u32(OFF_CMDR_OFF) as usize;
        ring.cmdr_size = ring.read_u32(OFF_CMDR_SIZE) as usize;
        if ring.cmdr_size == 0 || ring.cmdr_off.checked_add(ring.cmdr_size).is_none_or(|e| e > size) {
            return Err(Error::format(
                &ring.name,
                "TCMU mailbox",
                format!("command ring {}+{} outside the {size}-byte mapping", ring.cmdr_off, ring.cmdr_size),
            ));
        }
        Ok(ring)
    }

    /// The uio file, for polling.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if nothing is mapped (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Start of the mapping (the data buffers are at offsets from it).
    pub fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    fn read_u16(&self, off: usize) -> u16 {
        debug_assert!(off + 2 <= self.map.len());
        // SAFETY: `off + 2` is inside the mapping (all callers pass mailbox or checked entry
        // offsets); unaligned reads of shared memory are fine for plain integers.
        unsafe { self.base().add(off).cast::<u16>().read_unaligned() }
    }

    fn read_u32(&self, off: usize) -> u32 {
        debug_assert!(off + 4 <= self.map.len());
        // SAFETY: as in `read_u16`.
        unsafe { self.base().add(off).cast::<u32>().read_unaligned() }
    }

    fn read_u64(&self, off: usize) -> u64 {
        debug_assert!(off + 8 <= self.map.len());
        // SAFETY: as in `read_u16`.
        unsafe { self.base().add(off).cast::<u64>().read_unaligned() }
    }

    fn atomic(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `cmd_head` (12) and `cmd_tail` (64) are 4-byte aligned offsets of the
        // page-aligned mapping, live as long as `self`, and are only accessed atomically here.
        unsafe { &*self.base().add(off).cast::<AtomicU32>() }
    }

    /// Where the kernel will put its next entry.
    pub fn head(&self) -> usize {
        self.atomic(OFF_CMD_HEAD).load(Ordering::Acquire) as usize
    }

    /// The oldest entry not yet completed.
    pub fn tail(&self) -> usize {
        self.atomic(OFF_CMD_TAIL).load(Ordering::Relaxed) as usize
    }

    /// Publishes a new tail.
    pub fn set_tail(&self, tail: usize) {
        self.atomic(OFF_CMD_TAIL).store(tail as u32, Ordering::Release);
    }

    /// Reads the entry at ring position `pos`; returns it and the position after it.
    pub fn entry(&self, pos: usize) -> Result<(Entry, usize)> {
        let bad = |why: String| Error::format(&self.name, "TCMU ring", why);
        if !pos.is_multiple_of(8) || pos + 8 > self.cmdr_size {
            return Err(bad(format!("entry position {pos} outside the {}-byte ring", self.cmdr_size)));
        }
        let at = self.cmdr_off + pos;
        let len_op = self.read_u32(at);
        let len = (len_op & !OP_MASK) as usize;
        if len == 0 || pos + len > self.cmdr_size {
            return Err(bad(format!("entry at {pos} has length {len}")));
        }
        let next = (pos + len) % self.cmdr_size;
        if len_op & OP_MASK != OP_CMD {
            return Ok((Entry::Skip, next));
        }
        if len < REQ_IOV {
            return Err(bad(format!("command entry at {pos} is only {len} bytes")));
        }
        let id = self.read_u16(at + ENT_CMD_ID);
        let iov_cnt = self.read_u32(at + REQ_IOV_CNT) as usize;
        if REQ_IOV + iov_cnt * 16 > len {
            return Err(bad(format!("command {id} has {iov_cnt} iovecs in a {len}-byte entry")));
        }
        let cdb_off = self.read_u64(at + REQ_CDB_OFF) as usize;
        if cdb_off >= self.map.len() {
            return Err(bad(format!("command {id} has its CDB at {cdb_off}, outside the mapping")));
        }
        let n = CDB_COPY.min(self.map.len() - cdb_off);
        let mut cdb = vec![0u8; n];
        // SAFETY: `cdb_off + n` is inside the mapping (checked above); the kernel wrote the CDB
        // before publishing the entry with the head update we loaded with Acquire.
        unsafe { std::ptr::copy_nonoverlapping(self.base().add(cdb_off), cdb.as_mut_ptr(), n) };
        let iovs = (0..iov_cnt)
            .map(|i| {
                let o = at + REQ_IOV + i * 16;
                (self.read_u64(o) as usize, self.read_u64(o + 8) as usize)
            })
            .collect();
        Ok((Entry::Command(Command { id, cdb, iovs }), next))
    }

    /// Writes `r` into the oldest command slot at or after the tail, advances the tail past it,
    /// and returns the new tail (not yet published: see [`Ring::set_tail`]).
    pub fn complete(&self, mut tail: usize, r: &Response) -> Result<usize> {
        loop {
            let at = self.cmdr_off + tail;
            let len_op = self.read_u32(at);
            let len = (len_op & !OP_MASK) as usize;
            if len == 0 || tail + len > self.cmdr_size {
                return Err(Error::format(&self.name, "TCMU ring", format!("entry at {tail} has length {len}")));
            }
            if len_op & OP_MASK != OP_CMD {
                tail = (tail + len) % self.cmdr_size;
                continue;
            }
            if len < RSP_SENSE + SENSE_BUFFERSIZE {
                return Err(Error::format(
                    &self.name,
                    "TCMU ring",
                    format!("command slot at {tail} is only {len} bytes"),
                ));
            }
            let sense_len = r.sense.len().min(SENSE_BUFFERSIZE);
            // SAFETY: the entry at `at` is a command slot of at least 112 bytes (the kernel
            // sizes every command entry to hold a response) whose request was copied out when it
            // was taken; until the tail passes it, the kernel does not touch it.
            unsafe {
                let p = self.base().add(at);
                p.add(ENT_CMD_ID).cast::<u16>().write_unaligned(r.id);
                p.add(ENT_UFLAGS).write(0);
                p.add(RSP_STATUS).write(r.status);
                std::ptr::copy_nonoverlapping(r.sense.as_ptr(), p.add(RSP_SENSE), sense_len);
            }
            return Ok((tail + len) % self.cmdr_size);
        }
    }

    /// Tells the kernel that the tail moved.
    pub fn kick(&self) -> Result<()> {
        (&self.file).write_all(&1u32.to_ne_bytes()).map_err(|e| Error::io(&self.name, "notify the kernel", e))
    }

    /// Consumes a pending uio event, if any (the file is non-blocking).
    pub fn ack_event(&self) {
        let mut b = [0u8; 4];
        let _ = (&self.file).read(&mut b);
    }
}
