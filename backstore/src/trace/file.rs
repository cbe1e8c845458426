//! The trace file (spec §11): a 24-byte header `{u32 magic, u32 pad, u64 data_size, u32
//! checksum, u32 pad}` then `data_size / 24` records `{u8 op, 3 pad, u32 layer_index, u64 count,
//! u64 offset}`, all little-endian. `offset` and `count` are bytes of the layer's LSMT file view
//! (what [`CommittedLayer::source`](crate::lsmt::CommittedLayer::source) reads), `layer_index`
//! 0 is the bottom lower. The checksum is the raw CRC32C (seed 0) chained over the records as
//! written.

use crate::crc::{raw_crc32c, SEED_HEADER};
use crate::error::TraceProblem;

/// The magic at byte 0 of a trace file.
pub const MAGIC: u32 = 0xC2EF_1820;
/// Size of the header.
pub const HEADER_LEN: usize = 24;
/// Size of one record.
pub const RECORD_LEN: usize = 24;

/// A read (or write) of the device, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// `b'R'` or `b'W'`.
    pub op: u8,
    /// Lower layer number, 0 = bottom.
    pub layer: u32,
    /// Bytes read.
    pub count: u64,
    /// First byte in the layer's LSMT file view.
    pub offset: u64,
}

impl Record {
    /// A read of `count` bytes at `offset` of lower `layer`.
    pub fn read(layer: u32, offset: u64, count: u64) -> Self {
        Record { op: b'R', layer, count, offset }
    }

    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0] = self.op;
        b[4..8].copy_from_slice(&self.layer.to_le_bytes());
        b[8..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Record { op: b[0], layer: u32_at(4), count: u64_at(8), offset: u64_at(16) }
    }
}

/// True if `head` starts with the trace magic.
pub fn has_magic(head: &[u8]) -> bool {
    head.len() >= 4 && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == MAGIC
}

/// The bytes of a trace file holding `records`.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut body = Vec::with_capacity(records.len() * RECORD_LEN);
    for r in records {
        body.extend_from_slice(&r.encode());
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&raw_crc32c(&body, SEED_HEADER).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a whole trace file: magic, size and checksum are checked, the records are not
/// (see [`super::replay::validate`] for checks against a stack). Bytes after the records are
/// ignored.
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, TraceProblem> {
    if bytes.len() < HEADER_LEN {
        let found = if bytes.len() >= 4 { u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) } else { 0 };
        if found != MAGIC {
            return Err(TraceProblem::BadMagic { found, expected: MAGIC });
        }
        return Err(TraceProblem::Truncated { data_size: 0, needed: HEADER_LEN as u64, have: bytes.len() as u64 });
    }
    let found = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if found != MAGIC {
        return Err(TraceProblem::BadMagic { found, expected: MAGIC });
    }
    let data_size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let stored = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if !data_size.is_multiple_of(RECORD_LEN as u64) {
        return Err(TraceProblem::DataSize { data_size });
    }
    let have = bytes.len() as u64;
    let needed = data_size.saturating_add(HEADER_LEN as u64);
    if needed > have {
        return Err(TraceProblem::Truncated { data_size, needed, have });
    }
    let body = &bytes[HEADER_LEN..needed as usize];
    let computed = raw_crc32c(body, SEED_HEADER);
    if computed != stored {
        return Err(TraceProblem::Checksum { stored, computed });
    }
    Ok(body.chunks_exact(RECORD_LEN).map(Record::decode).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::read(0, 4096, 512),
            Record::read(3, 1 << 40, 65536),
            Record { op: b'W', layer: 1, count: 8, offset: 9 },
        ]
    }

    #[test]
    fn round_trips_with_the_documented_layout() {
        let recs = sample();
        let b = encode(&recs);
        assert_eq!(b.len(), HEADER_LEN + 3 * RECORD_LEN);
        assert_eq!(&b[..4], &[0x20, 0x18, 0xEF, 0xC2]);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 72);
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), raw_crc32c(&b[24..], 0));
        // the second record, field by field
        let r = &b[48..72];
        assert_eq!((r[0], &r[1..4]), (b'R', &[0u8, 0, 0][..]));
        assert_eq!(u32::from_le_bytes(r[4..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(r[8..16].try_into().unwrap()), 65536);
        assert_eq!(u64::from_le_bytes(r[16..24].try_into().unwrap()), 1 << 40);
        assert_eq!(decode(&b).unwrap(), recs);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
        assert!(has_magic(&b) && !has_magic(b"/usr/bin/x\n"));
    }

    #[test]
    fn every_damage_is_named() {
        let b = encode(&sample());
        let mut flipped = b.clone();
        flipped[40] ^= 1;
        assert!(matches!(decode(&flipped), Err(TraceProblem::Checksum { .. })));
        assert!(matches!(decode(&b[..b.len() - 1]), Err(TraceProblem::Truncated { needed: 96, have: 95, .. })));
        assert!(matches!(decode(&b[..10]), Err(TraceProblem::Truncated { .. })));
        let mut magic = b.clone();
        magic[0] = 0;
        assert!(matches!(decode(&magic), Err(TraceProblem::BadMagic { found: 0xC2EF_1800, .. })));
        assert!(matches!(decode(b"/bin/sh\n"), Err(TraceProblem::BadMagic { .. })));
        let mut size = b.clone();
        size[8] = 25;
        assert!(matches!(decode(&size), Err(TraceProblem::DataSize { data_size: 25 })));
        let mut huge = b;
        huge[8..16].copy_from_slice(&(u64::MAX - 15).to_le_bytes());
        assert!(matches!(decode(&huge), Err(TraceProblem::Truncated { .. })));
    }
}
