//! The 16-byte LSMT index entry (spec §3.4).

/// Offset value marking a padding/invalid entry (`2^50 - 1`).
pub const INVALID_OFFSET: u64 = (1 << 50) - 1;
/// Longest range one entry can map, in sectors.
pub const MAX_LENGTH: u32 = 16383;
const MOFFSET_MASK: u64 = (1 << 55) - 1;

/// One index entry: `length` sectors at LBA `offset` live at sector `moffset` of the layer file,
/// or read as zeros when `zeroed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    /// First sector (LBA) of the range on the virtual device.
    pub offset: u64,
    /// Number of sectors, 1..=16383 (0 only in padding entries).
    pub length: u32,
    /// Sector in the layer file where the bytes are.
    pub moffset: u64,
    /// The range reads as zeros and hides lower layers.
    pub zeroed: bool,
    /// Layer number in a merged index; ignored on disk.
    pub tag: u8,
}

impl Segment {
    /// The padding entry the reference writes: `FF FF FF FF FF FF 03 00` then zeros.
    pub const PADDING: Segment = Segment { offset: INVALID_OFFSET, length: 0, moffset: 0, zeroed: false, tag: 0 };

    /// A data entry.
    pub fn data(offset: u64, length: u32, moffset: u64) -> Self {
        Segment { offset, length, moffset, zeroed: false, tag: 0 }
    }

    /// A zeroed entry.
    pub fn zeroed(offset: u64, length: u32, moffset: u64) -> Self {
        Segment { offset, length, moffset, zeroed: true, tag: 0 }
    }

    /// Decodes 16 bytes (little-endian `lo`, `hi` words).
    #[inline]
    pub fn decode(b: &[u8; 16]) -> Self {
        let lo = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
        Segment {
            offset: lo & INVALID_OFFSET,
            length: (lo >> 50) as u32,
            moffset: hi & MOFFSET_MASK,
            zeroed: (hi >> 55) & 1 == 1,
            tag: (hi >> 56) as u8,
        }
    }

    /// Encodes to 16 bytes.
    #[inline]
    pub fn encode(&self) -> [u8; 16] {
        let lo = (self.offset & INVALID_OFFSET) | ((self.length as u64) << 50);
        let hi = (self.moffset & MOFFSET_MASK) | ((self.zeroed as u64) << 55) | ((self.tag as u64) << 56);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        b
    }

    /// True for a padding/invalid entry, which readers skip.
    #[inline]
    pub fn is_padding(&self) -> bool {
        self.offset == INVALID_OFFSET
    }

    /// One past the last sector mapped.
    #[inline]
    pub fn end(&self) -> u64 {
        self.offset + self.length as u64
    }

    /// One past the last sector of the layer file used (`moffset` for zeroed entries).
    #[inline]
    pub fn mend(&self) -> u64 {
        if self.zeroed {
            self.moffset
        } else {
            self.moffset + self.length as u64
        }
    }

    /// The part of this entry inside sectors `start..end` (which must overlap it); a data
    /// entry's `moffset` moves with the cut, a zeroed entry's stays.
    #[inline]
    pub fn slice(&self, start: u64, end: u64) -> Segment {
        let s = start.max(self.offset);
        let e = end.min(self.end());
        debug_assert!(s < e, "slice outside the segment");
        let moffset = if self.zeroed { self.moffset } else { self.moffset + (s - self.offset) };
        Segment { offset: s, length: (e - s) as u32, moffset, zeroed: self.zeroed, tag: self.tag }
    }
}

/// Decodes a buffer of whole entries, skipping padding entries.
pub fn decode_all(buf: &[u8]) -> Vec<Segment> {
    buf.chunks_exact(16)
        .map(|c| Segment::decode(c.try_into().expect("16-byte chunk")))
        .filter(|s| !s.is_padding())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_reference_entries() {
        let e = |s: &str| -> [u8; 16] { hex::decode(s.replace(' ', "")).unwrap().try_into().unwrap() };
        let a = Segment::decode(&e("00 00 00 00 00 00 00 84 08 00 00 00 00 00 00 00"));
        assert_eq!((a.offset, a.length, a.moffset, a.zeroed), (0, 8448, 8, false));
        let b = Segment::decode(&e("00 30 00 00 00 00 00 04 08 21 00 00 00 00 00 00"));
        assert_eq!((b.offset, b.length, b.moffset), (12288, 256, 8456));
        let c = Segment::decode(&e("00 00 04 00 00 00 20 01 08 22 00 00 00 00 00 00"));
        assert_eq!((c.offset, c.length, c.moffset), (262144, 72, 8712));
        assert_eq!(Segment::PADDING.encode(), e("FF FF FF FF FF FF 03 00 00 00 00 00 00 00 00 00"));
        for s in [a, b, c, Segment { offset: 5, length: 16383, moffset: (1 << 55) - 1, zeroed: true, tag: 200 }] {
            assert_eq!(Segment::decode(&s.encode()), s);
        }
    }

    #[test]
    fn slices_move_moffset_only_for_data() {
        let d = Segment::data(100, 50, 1000).slice(110, 120);
        assert_eq!((d.offset, d.length, d.moffset), (110, 10, 1010));
        let z = Segment::zeroed(100, 50, 1000).slice(110, 200);
        assert_eq!((z.offset, z.length, z.moffset), (110, 40, 1000));
    }
}
