//! Compaction of a layer into a committed LSMT file (spec §3.5), byte-compatible with the
//! reference's `overlaybd-commit`: data in LBA order from byte 4096, copied in 32 KiB steps whose
//! entries are merged greedily (so long runs become 16320-sector entries), zeroed entries at the
//! current data position, the index padded to a multiple of 256 entries, then the trailer.

use std::io::Write;

use super::header::{flags, LsmtHeader, USER_TAG_LEN};
use super::segment::{Segment, MAX_LENGTH};
use super::{DATA_START_SECTOR, HEADER_SIZE, MAX_COMMITTED_ENTRIES};
use crate::uuid::LayerUuid;
use crate::{Error, Result, SECTOR};

/// The copy step of the reference, in sectors (32 KiB).
const STEP: u64 = 64;
/// Entries per index block: the index is padded to a multiple of this.
const INDEX_ALIGN: usize = 256;

/// What goes into the committed layer's header and trailer.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// UUID of the committed layer.
    pub uuid: LayerUuid,
    /// UUID of its parent.
    pub parent_uuid: LayerUuid,
    /// Commit message (at most 256 bytes).
    pub user_tag: Vec<u8>,
    /// Virtual size of the device.
    pub virtual_size: u64,
}

/// What [`write_committed`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitStats {
    /// Size of the committed file in bytes.
    pub file_size: u64,
    /// Bytes of data copied.
    pub data_bytes: u64,
    /// Index entries written, padding excluded.
    pub entries: u64,
}

/// Writes a committed layer holding `segs` (sorted, non-overlapping) to `out`, reading the bytes
/// of each data entry with `read` (`buf` is `length * 512` bytes). Streams: nothing is seeked.
pub fn write_committed<W: Write + ?Sized>(
    segs: &[Segment],
    mut read: impl FnMut(&Segment, &mut [u8]) -> Result<()>,
    opts: &CommitOptions,
    out: &mut W,
) -> Result<CommitStats> {
    if opts.user_tag.len() > USER_TAG_LEN {
        return Err(Error::InvalidArgument(format!(
            "commit message is {} bytes; at most {USER_TAG_LEN} fit",
            opts.user_tag.len()
        )));
    }
    let werr = |e: std::io::Error| Error::io("committed layer output", "write", e);
    let mut header =
        LsmtHeader::new(flags::HEADER | flags::DATA | flags::SEALED, opts.virtual_size, opts.uuid, opts.parent_uuid);
    header.user_tag = opts.user_tag.clone();
    out.write_all(&header.encode()).map_err(werr)?;

    let mut index: Vec<Segment> = Vec::new();
    let push = |index: &mut Vec<Segment>, s: Segment| {
        if let Some(last) = index.last_mut() {
            if last.end() == s.offset
                && last.mend() == s.moffset
                && last.zeroed == s.zeroed
                && last.tag == s.tag
                && last.length + s.length < MAX_LENGTH
            {
                last.length += s.length;
                return;
            }
        }
        index.push(s);
    };
    let mut pos = DATA_START_SECTOR;
    let mut buf = vec![0u8; (STEP * SECTOR) as usize];
    for seg in segs {
        if seg.zeroed {
            push(&mut index, Segment::zeroed(seg.offset, seg.length, pos));
            continue;
        }
        let mut done = 0u64;
        while done < seg.length as u64 {
            let n = STEP.min(seg.length as u64 - done);
            let piece = seg.slice(seg.offset + done, seg.offset + done + n);
            let b = &mut buf[..(n * SECTOR) as usize];
            read(&piece, b)?;
            out.write_all(b).map_err(werr)?;
            push(&mut index, Segment::data(piece.offset, n as u32, pos));
            pos += n;
            done += n;
        }
    }
    let entries = index.len() as u64;
    let padded = index.len().div_ceil(INDEX_ALIGN) * INDEX_ALIGN;
    if padded as u64 > MAX_COMMITTED_ENTRIES {
        return Err(Error::Limit {
            what: "index entries of a committed layer (readers refuse more)".into(),
            value: padded as u64,
            limit: MAX_COMMITTED_ENTRIES,
        });
    }
    let mut raw = Vec::with_capacity(padded * 16);
    for s in &index {
        raw.extend_from_slice(&s.encode());
    }
    while raw.len() < padded * 16 {
        raw.extend_from_slice(&Segment::PADDING.encode());
    }
    out.write_all(&raw).map_err(werr)?;
    let mut trailer = header;
    trailer.flags = flags::DATA | flags::SEALED;
    trailer.index_offset = pos * SECTOR;
    trailer.index_size = padded as u64;
    out.write_all(&trailer.encode()).map_err(werr)?;
    out.flush().map_err(werr)?;
    Ok(CommitStats {
        file_size: pos * SECTOR + raw.len() as u64 + HEADER_SIZE,
        data_bytes: (pos - DATA_START_SECTOR) * SECTOR,
        entries,
    })
}
