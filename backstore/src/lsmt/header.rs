//! The 4096-byte LSMT header and trailer (spec §3.2, §3.3).

use crate::uuid::LayerUuid;

/// `"LSMT"`, 0, 1, 2, 0.
pub const MAGIC0: [u8; 8] = *b"LSMT\x00\x01\x02\x00";
/// The second magic.
pub const MAGIC1: [u8; 16] =
    [0x65, 0x7E, 0x63, 0xD2, 0x94, 0x44, 0x08, 0x4C, 0xA2, 0xD2, 0xC8, 0xEC, 0x4F, 0xCF, 0xAE, 0x8A];
/// The `size` field: meaningful bytes of the struct.
pub const STRUCT_SIZE: u32 = 390;
/// Capacity of the user tag (commit message).
pub const USER_TAG_LEN: usize = 256;

/// Bits of the `flags` field.
pub mod flags {
    /// This struct is a header (at offset 0); clear in a trailer.
    pub const HEADER: u32 = 0x01;
    /// Data file, or a committed/sealed file; clear in the index file of a writable pair.
    pub const DATA: u32 = 0x02;
    /// Read-only (committed or sealed).
    pub const SEALED: u32 = 0x04;
    /// Data file of a sparse writable layer.
    pub const SPARSE: u32 = 0x10;
}

/// A decoded header or trailer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LsmtHeader {
    /// See [`flags`].
    pub flags: u32,
    /// Byte offset of the index (meaning depends on the file kind).
    pub index_offset: u64,
    /// Number of 16-byte index entries.
    pub index_size: u64,
    /// Size of the virtual block device in bytes.
    pub virtual_size: u64,
    /// This layer's UUID.
    pub uuid: LayerUuid,
    /// The UUID of the layer below.
    pub parent_uuid: LayerUuid,
    /// Format version (1).
    pub version: u8,
    /// Format sub-version (1).
    pub sub_version: u8,
    /// Commit message, at most 256 bytes.
    pub user_tag: Vec<u8>,
}

impl LsmtHeader {
    /// A header with the given flags and sizes, version 1.1, no tag.
    pub fn new(flags: u32, virtual_size: u64, uuid: LayerUuid, parent_uuid: LayerUuid) -> Self {
        LsmtHeader {
            flags,
            index_offset: 0,
            index_size: 0,
            virtual_size,
            uuid,
            parent_uuid,
            version: 1,
            sub_version: 1,
            user_tag: Vec::new(),
        }
    }

    /// True if `buf` starts with both LSMT magics.
    pub fn has_magic(buf: &[u8]) -> bool {
        buf.len() >= 24 && buf[..8] == MAGIC0 && buf[8..24] == MAGIC1
    }

    /// Decodes a 4096-byte (at least 390-byte) struct; `None` if the magics are wrong.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        if buf.len() < STRUCT_SIZE as usize || !Self::has_magic(buf) {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
        let tag = &buf[134..134 + USER_TAG_LEN];
        let tag_len = tag.iter().position(|&c| c == 0).unwrap_or(USER_TAG_LEN);
        Some(LsmtHeader {
            flags: u32_at(28),
            index_offset: u64_at(32),
            index_size: u64_at(40),
            virtual_size: u64_at(48),
            uuid: LayerUuid::from_field(&buf[56..93]),
            parent_uuid: LayerUuid::from_field(&buf[93..130]),
            version: buf[132],
            sub_version: buf[133],
            user_tag: tag[..tag_len].to_vec(),
        })
    }

    /// Encodes to 4096 bytes. The user tag is cut at 256 bytes (callers check the length).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; super::HEADER_SIZE as usize];
        b[..8].copy_from_slice(&MAGIC0);
        b[8..24].copy_from_slice(&MAGIC1);
        b[24..28].copy_from_slice(&STRUCT_SIZE.to_le_bytes());
        b[28..32].copy_from_slice(&self.flags.to_le_bytes());
        b[32..40].copy_from_slice(&self.index_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.index_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.virtual_size.to_le_bytes());
        b[56..93].copy_from_slice(&self.uuid.to_field());
        b[93..130].copy_from_slice(&self.parent_uuid.to_field());
        b[132] = self.version;
        b[133] = self.sub_version;
        let n = self.user_tag.len().min(USER_TAG_LEN);
        b[134..134 + n].copy_from_slice(&self.user_tag[..n]);
        b
    }

    /// True if the [`flags::HEADER`] bit is set.
    pub fn is_header(&self) -> bool {
        self.flags & flags::HEADER != 0
    }
    /// True if the [`flags::DATA`] bit is set.
    pub fn is_data(&self) -> bool {
        self.flags & flags::DATA != 0
    }
    /// True if the [`flags::SEALED`] bit is set.
    pub fn is_sealed(&self) -> bool {
        self.flags & flags::SEALED != 0
    }
    /// True if the [`flags::SPARSE`] bit is set.
    pub fn is_sparse(&self) -> bool {
        self.flags & flags::SPARSE != 0
    }
}

/// Byte offset of the `virtual_size` field, rewritten in place by `update_vsize`.
pub const VIRTUAL_SIZE_OFFSET: u64 = 48;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut h = LsmtHeader::new(0x06, 1 << 36, LayerUuid::random(), LayerUuid::NIL);
        h.index_offset = 71_512_064;
        h.index_size = 768;
        h.user_tag = b"hello".to_vec();
        let b = h.encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(LsmtHeader::decode(&b).unwrap(), h);
        assert!(LsmtHeader::decode(&[0u8; 4096]).is_none());
    }
}
