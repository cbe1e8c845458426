//! Writable LSMT layers (spec §3.7, §3.8): the append-only pair (data file + index log) and the
//! sparse file, with crash-safe reopen, discard, `update_vsize` and `seal`.
//!
//! Crash safety. An append-only layer writes the data first and then its log entry, so after a
//! crash the log can only be ahead of the data file, never behind: opening with
//! [`Recovery::RollBack`] drops the unflushed tail of the log that points past the end of the
//! data file (what the device had not yet promised to keep), while [`Recovery::Strict`] (the
//! default for tools) reports it as [`Error::DataFileCutShort`]. A torn last log entry is ignored
//! and overwritten by the next write. A sparse layer keeps no index on disk: its mapping is
//! rebuilt from the data file's allocated extents on every open, so it is always consistent.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};

use super::header::{flags, LsmtHeader, VIRTUAL_SIZE_OFFSET};
use super::index::Piece;
use super::interval_map::IntervalMap;
use super::segment::{Segment, MAX_LENGTH};
use super::{DATA_START_SECTOR, HEADER_SIZE, MAX_LOG_ENTRIES};
use crate::io::{pread_full, pwrite_all};
use crate::uuid::LayerUuid;
use crate::{Error, Result, SECTOR};

const FORMAT: &str = "writable LSMT layer";
/// Writes are logged in pieces of at most this many bytes.
pub const MAX_WRITE_PIECE: usize = 4 << 20;

/// How to treat a log that points past the end of its data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Refuse to open, with [`Error::DataFileCutShort`].
    #[default]
    Strict,
    /// Drop the tail of the log from the first such entry on (the writes that were not flushed
    /// before a crash) and, if opened for writing, truncate the log file there.
    RollBack,
}

/// Options for [`WritableLayer::create`].
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Virtual size in bytes (0: set later from the lower layers).
    pub virtual_size: u64,
    /// UUID of this layer (the reference always takes a random one).
    pub uuid: LayerUuid,
    /// UUID of the layer below.
    pub parent_uuid: LayerUuid,
    /// Sparse layer (`overlaybd-create -s`).
    pub sparse: bool,
}

/// The two kinds of writable layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Data file with appended extents, plus an index log file.
    AppendOnly,
    /// Data stored at `4096 + LBA * 512` of one sparse file.
    Sparse,
}

struct Append {
    data_end: u64,
    index_end: u64,
}

/// A writable layer, safe to use from many threads.
pub struct WritableLayer {
    kind: Kind,
    data: File,
    data_name: String,
    index: Option<File>,
    index_name: String,
    writable: bool,
    /// Serialises appends; holds the end of the data file and of the log.
    append: Mutex<Append>,
    map: RwLock<IntervalMap>,
    header: RwLock<LsmtHeader>,
    log_entries: u64,
    alloc_unit: u64,
}

fn open_file(path: &Path, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| Error::io(path.display().to_string(), if write { "open for writing" } else { "open" }, e))
}

impl WritableLayer {
    /// Creates a new writable layer (both files must not exist), as `overlaybd-create` does.
    pub fn create(data_path: &Path, index_path: &Path, opts: &CreateOptions) -> Result<()> {
        let create = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(p)
                .map_err(|e| Error::io(p.display().to_string(), "create", e))
        };
        let dname = data_path.display().to_string();
        let iname = index_path.display().to_string();
        let data = create(data_path)?;
        let index = create(index_path)?;
        let mut h = LsmtHeader::new(flags::HEADER | flags::DATA, opts.virtual_size, opts.uuid, opts.parent_uuid);
        if opts.sparse {
            h.flags |= flags::SPARSE;
            pwrite_all(&data, &dname, &h.encode(), 0)?;
            data.set_len(HEADER_SIZE + opts.virtual_size).map_err(|e| Error::io(&dname, "truncate", e))?;
        } else {
            pwrite_all(&data, &dname, &h.encode(), 0)?;
            let mut ih = LsmtHeader::new(flags::HEADER, opts.virtual_size, opts.uuid, opts.parent_uuid);
            ih.index_offset = HEADER_SIZE;
            pwrite_all(&index, &iname, &ih.encode(), 0)?;
        }
        data.sync_all().map_err(|e| Error::io(&dname, "fsync", e))?;
        index.sync_all().map_err(|e| Error::io(&iname, "fsync", e))?;
        Ok(())
    }

    /// Opens an existing writable layer; `writable` opens the files for writing.
    pub fn open(data_path: &Path, index_path: &Path, writable: bool, recovery: Recovery) -> Result<Self> {
        let data_name = data_path.display().to_string();
        let index_name = index_path.display().to_string();
        let data = open_file(data_path, writable)?;
        let mut hbuf = vec![0u8; HEADER_SIZE as usize];
        let n = pread_full(&data, &data_name, &mut hbuf, 0)?;
        check_header_len(&hbuf[..n], &data_name, "data file header")?;
        let dh = LsmtHeader::decode(&hbuf[..n])
            .ok_or_else(|| Error::format(&data_name, FORMAT, "bad magic in the data file header"))?;
        if !dh.is_header() || !dh.is_data() {
            return Err(Error::format(
                &data_name,
                FORMAT,
                format!("data file header flags {:#x} lack the header/data bits", dh.flags),
            ));
        }
        if dh.is_sealed() {
            return Err(Error::format(
                &data_name,
                FORMAT,
                "the data file is sealed (read-only); open it as a committed layer",
            ));
        }
        let data_size = data.metadata().map_err(|e| Error::io(&data_name, "stat", e))?.len();
        if has_seal_trailer(&data, &data_name, data_size)? {
            return Err(Error::format(
                &data_name,
                FORMAT,
                "the data file is sealed (read-only); open it as a committed layer",
            ));
        }
        if dh.is_sparse() {
            let map = sparse_extents(&data, &data_name, data_size)?;
            let alloc_unit = alloc_unit(&data);
            return Ok(WritableLayer {
                kind: Kind::Sparse,
                data,
                data_name,
                index: None,
                index_name,
                writable,
                append: Mutex::new(Append { data_end: data_size, index_end: 0 }),
                map: RwLock::new(map),
                header: RwLock::new(dh),
                log_entries: 0,
                alloc_unit,
            });
        }
        let index = open_file(index_path, writable)?;
        let n = pread_full(&index, &index_name, &mut hbuf, 0)?;
        check_header_len(&hbuf[..n], &index_name, "index file header")?;
        let ih = LsmtHeader::decode(&hbuf[..n])
            .ok_or_else(|| Error::format(&index_name, FORMAT, "bad magic in the index file header"))?;
        if !ih.is_header() || ih.is_data() || ih.is_sealed() || ih.index_offset != HEADER_SIZE {
            return Err(Error::format(
                &index_name,
                FORMAT,
                format!(
                    "index file header has flags {:#x} and index offset {} (want flags 0x1, offset 4096)",
                    ih.flags, ih.index_offset
                ),
            ));
        }
        let index_size = index.metadata().map_err(|e| Error::io(&index_name, "stat", e))?.len();
        let entries = index_size.saturating_sub(HEADER_SIZE) / 16;
        if entries > MAX_LOG_ENTRIES {
            return Err(Error::Limit {
                what: format!("{index_name}: entries in the index log"),
                value: entries,
                limit: MAX_LOG_ENTRIES,
            });
        }
        let data_sectors = data_size / SECTOR;
        let mut map = IntervalMap::new();
        let mut kept = 0u64;
        let mut chunk = vec![0u8; 1 << 20];
        let mut pos = HEADER_SIZE;
        let end = HEADER_SIZE + entries * 16;
        'replay: while pos < end {
            let len = ((end - pos) as usize).min(chunk.len());
            let got = pread_full(&index, &index_name, &mut chunk[..len], pos)?;
            if got < len {
                return Err(Error::Truncated {
                    file: index_name,
                    what: "index log".into(),
                    offset: pos,
                    end,
                    size: index_size,
                });
            }
            for c in chunk[..len].chunks_exact(16) {
                let s = Segment::decode(c.try_into().expect("16 bytes"));
                let entry_no = kept;
                if !s.is_padding() {
                    if s.moffset < DATA_START_SECTOR {
                        return Err(Error::format(
                            &index_name,
                            FORMAT,
                            format!(
                                "log entry {entry_no} maps sectors {}..{} of the data file, inside its header",
                                s.moffset,
                                s.mend()
                            ),
                        ));
                    }
                    let bad = if s.zeroed { s.moffset > data_sectors } else { s.mend() > data_sectors };
                    if bad {
                        if recovery == Recovery::RollBack {
                            tracing::warn!(index = %index_name, entry = entry_no, dropped = entries - entry_no,
                                "rolling back index log entries that point past the end of the data file");
                            break 'replay;
                        }
                        return Err(Error::DataFileCutShort {
                            index: index_name,
                            data: data_name,
                            entry: entry_no,
                            start: s.moffset,
                            end: s.mend(),
                            have: data_sectors,
                        });
                    }
                    if s.length > 0 {
                        map.insert(Segment { tag: 0, ..s });
                    }
                }
                kept += 1;
            }
            pos += len as u64;
        }
        let index_end = HEADER_SIZE + kept * 16;
        if writable && index_end != index_size {
            index
                .set_len(index_end)
                .map_err(|e| Error::io(&index_name, "truncate the torn or rolled-back log tail", e))?;
        }
        let data_end = data_size.div_ceil(SECTOR) * SECTOR;
        let mut header = ih;
        header.flags = dh.flags;
        Ok(WritableLayer {
            kind: Kind::AppendOnly,
            data,
            data_name,
            index: Some(index),
            index_name,
            writable,
            append: Mutex::new(Append { data_end, index_end }),
            map: RwLock::new(map),
            header: RwLock::new(header),
            log_entries: kept,
            alloc_unit: SECTOR,
        })
    }

    /// The granularity in which the data file maps bytes: a sparse layer's mapping comes from
    /// the file system's allocation, so a write smaller than a file system block maps the whole
    /// block after a reopen (the stack fills such blocks read-modify-write). 512 for append-only.
    pub fn alloc_unit(&self) -> u64 {
        self.alloc_unit
    }

    /// Append-only or sparse.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Virtual size in bytes (from the index file of an append-only layer).
    pub fn virtual_size(&self) -> u64 {
        self.header.read().expect("header lock").virtual_size
    }

    /// This layer's UUID and its parent's.
    pub fn uuids(&self) -> (LayerUuid, LayerUuid) {
        let h = self.header.read().expect("header lock");
        (h.uuid, h.parent_uuid)
    }

    /// Number of log entries replayed on open (append-only layers).
    pub fn log_entries(&self) -> u64 {
        self.log_entries
    }

    /// Name of the data file, for messages.
    pub fn data_name(&self) -> &str {
        &self.data_name
    }

    /// Rewrites the virtual size in both headers in place (`update_vsize`).
    pub fn set_virtual_size(&self, vsize: u64) -> Result<()> {
        self.check_writable()?;
        let b = vsize.to_le_bytes();
        pwrite_all(&self.data, &self.data_name, &b, VIRTUAL_SIZE_OFFSET)?;
        if let Some(index) = &self.index {
            pwrite_all(index, &self.index_name, &b, VIRTUAL_SIZE_OFFSET)?;
        }
        if self.kind == Kind::Sparse {
            self.data.set_len(HEADER_SIZE + vsize).map_err(|e| Error::io(&self.data_name, "resize", e))?;
        }
        self.header.write().expect("header lock").virtual_size = vsize;
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly)
        }
    }

    /// The entries covering sectors `start..end`, appended to `out` with the holes between.
    pub fn pieces(&self, start: u64, end: u64, out: &mut Vec<Piece>) {
        self.map.read().expect("map lock").pieces(start, end, out)
    }

    /// A snapshot of the whole index, in LBA order.
    pub fn segments(&self) -> Vec<Segment> {
        self.map.read().expect("map lock").segments()
    }

    /// Reads the bytes of a (slice of a) data entry; a short read is zero-filled.
    pub fn read_segment(&self, seg: &Segment, buf: &mut [u8]) -> Result<()> {
        if seg.zeroed {
            buf.fill(0);
            return Ok(());
        }
        let n = pread_full(&self.data, &self.data_name, buf, seg.moffset * SECTOR)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// Writes `buf` at byte `offset` (both 512-aligned).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_aligned(offset, buf.len() as u64)?;
        match self.kind {
            Kind::Sparse => {
                pwrite_all(&self.data, &self.data_name, buf, HEADER_SIZE + offset)?;
                let mut map = self.map.write().expect("map lock");
                for (lba, len) in split(offset / SECTOR, buf.len() as u64 / SECTOR, MAX_LENGTH as u64) {
                    map.insert(Segment::data(lba, len as u32, lba + DATA_START_SECTOR));
                }
                Ok(())
            }
            Kind::AppendOnly => {
                for (i, piece) in buf.chunks(MAX_WRITE_PIECE).enumerate() {
                    let lba = offset / SECTOR + (i * MAX_WRITE_PIECE) as u64 / SECTOR;
                    let mut a = self.append.lock().expect("append lock");
                    pwrite_all(&self.data, &self.data_name, piece, a.data_end)?;
                    let seg = Segment::data(lba, (piece.len() as u64 / SECTOR) as u32, a.data_end / SECTOR);
                    self.log(&mut a, &seg)?;
                    a.data_end += piece.len() as u64;
                    self.map.write().expect("map lock").insert(seg);
                }
                Ok(())
            }
        }
    }

    fn log(&self, a: &mut Append, seg: &Segment) -> Result<()> {
        let index = self.index.as_ref().expect("append-only layers have an index file");
        pwrite_all(index, &self.index_name, &seg.encode(), a.index_end)?;
        a.index_end += 16;
        Ok(())
    }

    /// Discards `len` bytes at `offset`: the range reads as zeros and hides lower layers.
    ///
    /// In a sparse layer the hole is punched and the range is marked zeroed in memory; after a
    /// reopen a hole is simply unmapped (lower layers show through), as in the reference, so
    /// the stack writes zeros instead where a lower layer has data (see `stack`).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_aligned(offset, len)?;
        match self.kind {
            Kind::Sparse => {
                fallocate(
                    self.data.as_raw_fd(),
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    (HEADER_SIZE + offset) as i64,
                    len as i64,
                )
                .map_err(|e| Error::io(&self.data_name, format!("punch hole at {offset}, {len} bytes"), e.into()))?;
                let mut map = self.map.write().expect("map lock");
                for (lba, n) in split(offset / SECTOR, len / SECTOR, MAX_LENGTH as u64) {
                    map.insert(Segment::zeroed(lba, n as u32, lba + DATA_START_SECTOR));
                }
                Ok(())
            }
            Kind::AppendOnly => {
                let mut a = self.append.lock().expect("append lock");
                for (lba, n) in split(offset / SECTOR, len / SECTOR, MAX_LENGTH as u64) {
                    let seg = Segment::zeroed(lba, n as u32, a.data_end / SECTOR);
                    self.log(&mut a, &seg)?;
                    self.map.write().expect("map lock").insert(seg);
                }
                Ok(())
            }
        }
    }

    /// Makes everything written so far durable: data first, then the log.
    pub fn flush(&self) -> Result<()> {
        self.data.sync_data().map_err(|e| Error::io(&self.data_name, "fdatasync", e))?;
        if let Some(index) = &self.index {
            index.sync_data().map_err(|e| Error::io(&self.index_name, "fdatasync", e))?;
        }
        Ok(())
    }

    /// Seals the layer in place (`overlaybd-commit --seal`): appends the index and a trailer to
    /// the data file, which then opens as a read-only layer. The header is left unchanged.
    pub fn seal(self) -> Result<()> {
        self.check_writable()?;
        let a = self.append.lock().expect("append lock");
        let segs = if self.kind == Kind::Sparse {
            // The on-disk truth of a sparse layer is its extents.
            let size = self.data.metadata().map_err(|e| Error::io(&self.data_name, "stat", e))?.len();
            sparse_extents(&self.data, &self.data_name, size)?.segments()
        } else {
            self.map.read().expect("map lock").segments()
        };
        let index_offset = a.data_end;
        let mut raw = Vec::with_capacity(segs.len() * 16 + 512);
        for s in &segs {
            raw.extend_from_slice(&Segment { tag: 0, ..*s }.encode());
        }
        while raw.len() % SECTOR as usize != 0 || raw.is_empty() {
            raw.extend_from_slice(&Segment::PADDING.encode());
        }
        let h = self.header.read().expect("header lock");
        let mut trailer = LsmtHeader::new(flags::DATA | flags::SEALED, h.virtual_size, h.uuid, h.parent_uuid);
        if self.kind == Kind::Sparse {
            trailer.flags |= flags::SPARSE;
        }
        trailer.index_offset = index_offset;
        trailer.index_size = segs.len() as u64;
        pwrite_all(&self.data, &self.data_name, &raw, index_offset)?;
        pwrite_all(&self.data, &self.data_name, &trailer.encode(), index_offset + raw.len() as u64)?;
        self.data.sync_all().map_err(|e| Error::io(&self.data_name, "fsync", e))?;
        Ok(())
    }
}

/// Splits `len` sectors at `lba` into pieces of at most `max` sectors.
fn split(lba: u64, len: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..len.div_ceil(max)).map(move |i| {
        let s = lba + i * max;
        (s, max.min(lba + len - s))
    })
}

/// A header read of `head.len()` bytes that shows the LSMT magic (or too little to tell) but
/// is shorter than a header is a file cut short, not a bad magic.
fn check_header_len(head: &[u8], name: &str, what: &str) -> Result<()> {
    if head.len() < HEADER_SIZE as usize && (head.len() < 24 || LsmtHeader::has_magic(head)) {
        return Err(Error::Truncated {
            file: name.to_string(),
            what: what.to_string(),
            offset: 0,
            end: HEADER_SIZE,
            size: head.len() as u64,
        });
    }
    Ok(())
}

fn check_aligned(offset: u64, len: u64) -> Result<()> {
    if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
        return Err(Error::Unaligned { offset, len });
    }
    Ok(())
}

/// True if the data file ends with the trailer that `seal` appends (the header is left as it
/// was, so the trailer is the only mark of a sealed file): magic, sealed flag, and an index that
/// ends at most one sector of padding before the trailer.
fn has_seal_trailer(data: &File, name: &str, size: u64) -> Result<bool> {
    if size < 2 * HEADER_SIZE {
        return Ok(false);
    }
    let mut buf = vec![0u8; HEADER_SIZE as usize];
    pread_full(data, name, &mut buf, size - HEADER_SIZE)?;
    Ok(LsmtHeader::decode(&buf).is_some_and(|t| {
        let index_end = t.index_offset.saturating_add(t.index_size.saturating_mul(16));
        let trailer = size - HEADER_SIZE;
        !t.is_header() && t.is_sealed() && index_end <= trailer && trailer - index_end <= SECTOR
    }))
}

/// The file system block size of `f` (at least one sector, at most 64 KiB).
fn alloc_unit(f: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    f.metadata().map(|m| m.blksize()).unwrap_or(4096).clamp(SECTOR, 65536).next_power_of_two()
}

/// Rebuilds a sparse layer's mapping from the allocated extents of its data file.
fn sparse_extents(data: &File, name: &str, size: u64) -> Result<IntervalMap> {
    let mut map = IntervalMap::new();
    let mut pos = HEADER_SIZE as i64;
    let size = size as i64;
    while pos < size {
        let start = match lseek(data.as_raw_fd(), pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(Error::io(name, "SEEK_DATA", e.into())),
        };
        let end = match lseek(data.as_raw_fd(), start, Whence::SeekHole) {
            Ok(e) => e.min(size),
            Err(e) => return Err(Error::io(name, "SEEK_HOLE", e.into())),
        };
        // Extents are filesystem-block aligned; round outwards to whole sectors.
        let s = (start as u64 / SECTOR).max(DATA_START_SECTOR);
        let e = (end as u64).div_ceil(SECTOR);
        for (m, n) in split(s, e.saturating_sub(s), MAX_LENGTH as u64) {
            map.insert(Segment::data(m - DATA_START_SECTOR, n as u32, m));
        }
        pos = end;
    }
    Ok(map)
}
