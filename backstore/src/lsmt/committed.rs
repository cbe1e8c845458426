//! Read-only LSMT layer files: committed ("compacted") and sealed layers (spec §3.5, §3.6).

use std::sync::Arc;

use super::header::LsmtHeader;
use super::index::{check_sorted, SortedIndex};
use super::segment::{decode_all, Segment};
use super::{DATA_START_SECTOR, HEADER_SIZE, MAX_COMMITTED_ENTRIES};
use crate::io::ReadAt;
use crate::{Error, Result, SECTOR};

const FORMAT: &str = "LSMT layer";

/// A committed or sealed layer, read through any [`ReadAt`] (a file, a ZFile, a tar payload).
pub struct CommittedLayer {
    src: Arc<dyn ReadAt>,
    header: LsmtHeader,
    trailer: LsmtHeader,
    index: SortedIndex,
    on_disk_entries: u64,
}

impl CommittedLayer {
    /// Opens `src`, checks header, trailer and index as the reference does, and loads the
    /// index. Sizes in the trailer are checked against the file before anything is allocated.
    pub fn open(src: Arc<dyn ReadAt>) -> Result<Self> {
        let name = src.name().to_string();
        let size = src.size();
        if size < 2 * HEADER_SIZE {
            return Err(Error::format(&name, FORMAT, format!("{size} bytes is too small for a header and a trailer")));
        }
        let mut buf = vec![0u8; HEADER_SIZE as usize];
        src.read_meta_at(&mut buf, 0, "LSMT header")?;
        let header = LsmtHeader::decode(&buf).ok_or_else(|| Error::format(&name, FORMAT, "bad magic in the header"))?;
        if !header.is_header() || !header.is_data() {
            return Err(Error::format(
                &name,
                FORMAT,
                format!("header flags {:#x} are not those of a data file header", header.flags),
            ));
        }
        src.read_meta_at(&mut buf, size - HEADER_SIZE, "LSMT trailer")?;
        let trailer = LsmtHeader::decode(&buf).ok_or_else(|| {
            Error::format(&name, FORMAT, "no trailer (bad magic at the end): not a committed or sealed layer")
        })?;
        if trailer.is_header() || !trailer.is_data() || !trailer.is_sealed() {
            return Err(Error::format(
                &name,
                FORMAT,
                format!("trailer flags {:#x} are not those of a sealed data file", trailer.flags),
            ));
        }
        let (io, n) = (trailer.index_offset, trailer.index_size);
        let body = size - HEADER_SIZE;
        if io % SECTOR != 0 || io < HEADER_SIZE || io > body {
            return Err(Error::format(
                &name,
                FORMAT,
                format!("index offset {io} is outside the data area 4096..{body} or unaligned"),
            ));
        }
        if n.checked_mul(16).is_none_or(|b| b > body - io) {
            return Err(Error::format(
                &name,
                FORMAT,
                format!("index of {n} entries at {io} does not fit in the {size}-byte file"),
            ));
        }
        if n > MAX_COMMITTED_ENTRIES {
            return Err(Error::format(
                &name,
                FORMAT,
                format!("index of {n} entries exceeds the limit of {MAX_COMMITTED_ENTRIES} entries readers accept"),
            ));
        }
        let mut raw = vec![0u8; (n * 16) as usize];
        src.read_meta_at(&mut raw, io, "LSMT index")?;
        let segs = decode_all(&raw);
        check_sorted(&segs).map_err(|r| Error::format(&name, FORMAT, r))?;
        let data_end = io / SECTOR;
        for (i, s) in segs.iter().enumerate() {
            let bad = if s.zeroed {
                s.moffset < DATA_START_SECTOR || s.moffset > data_end
            } else {
                s.moffset < DATA_START_SECTOR || s.moffset + s.length as u64 > data_end
            };
            if bad {
                return Err(Error::format(
                    &name,
                    FORMAT,
                    format!("index entry {i} points to sectors {}..{} outside the data area {DATA_START_SECTOR}..{data_end}", s.moffset, s.mend()),
                ));
            }
        }
        let segs = segs.into_iter().map(|s| Segment { tag: 0, ..s }).collect();
        Ok(CommittedLayer { src, header, index: SortedIndex::new(segs), on_disk_entries: n, trailer })
    }

    /// The trailer: uuid, parent uuid, virtual size, index position.
    pub fn trailer(&self) -> &LsmtHeader {
        &self.trailer
    }

    /// The header at offset 0.
    pub fn header(&self) -> &LsmtHeader {
        &self.header
    }

    /// Virtual size of the device in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.trailer.virtual_size
    }

    /// The index without padding entries (tags cleared).
    pub fn index(&self) -> &SortedIndex {
        &self.index
    }

    /// Number of index entries on disk, padding included.
    pub fn on_disk_entries(&self) -> u64 {
        self.on_disk_entries
    }

    /// The source the layer is read from.
    pub fn source(&self) -> &Arc<dyn ReadAt> {
        &self.src
    }

    /// Reads the bytes of a data entry (or a slice of one) into `buf` (`length * 512` bytes);
    /// a short read from the file is zero-filled, as the reference does.
    pub fn read_segment(&self, seg: &Segment, buf: &mut [u8]) -> Result<()> {
        debug_assert_eq!(buf.len() as u64, seg.length as u64 * SECTOR);
        if seg.zeroed {
            buf.fill(0);
            return Ok(());
        }
        let n = self.src.read_at(buf, seg.moffset * SECTOR)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// Reads sectors of the layer alone (unmapped and zeroed sectors read as zeros).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = offset / SECTOR;
        let end = start + buf.len() as u64 / SECTOR;
        self.index.for_each_piece(start, end, |p| {
            let (s, e, seg) = match p {
                super::index::Piece::Mapped(s) => (s.offset, s.end(), Some(s)),
                super::index::Piece::Hole { start, end } => (start, end, None),
            };
            let out = &mut buf[((s - start) * SECTOR) as usize..((e - start) * SECTOR) as usize];
            match seg {
                Some(seg) => self.read_segment(&seg, out),
                None => {
                    out.fill(0);
                    Ok(())
                }
            }
        })
    }
}
