//! The 512-byte ZFile header and trailer (spec §4.2, §4.3).

use super::codec::Algorithm;
use crate::crc::{raw_crc32c, SEED_HEADER};

/// `"ZFile"`, 0, 1, 0.
pub const MAGIC0: [u8; 8] = *b"ZFile\x00\x01\x00";
/// `"tuji.yyf@Alibaba"`.
pub const MAGIC1: [u8; 16] = *b"tuji.yyf@Alibaba";
/// The `size` field.
pub const STRUCT_SIZE: u32 = 96;

/// Bits of the `flags` field (only the low bits mean anything; legacy files have garbage above).
pub mod flags {
    /// Header (clear in a trailer).
    pub const HEADER: u64 = 0x01;
    /// Always set in practice.
    pub const DATA: u64 = 0x02;
    /// Set in the trailer.
    pub const SEALED: u64 = 0x04;
    /// The header was rewritten with the final index fields.
    pub const HEADER_OVERWRITE: u64 = 0x08;
    /// `digest` and `index_crc` are valid and must be checked.
    pub const DIGEST: u64 = 0x10;
}

/// A decoded header or trailer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZFileHeader {
    /// See [`flags`].
    pub flags: u64,
    /// The stored digest.
    pub digest: u32,
    /// Byte offset of the jump table.
    pub index_offset: u64,
    /// Number of blocks.
    pub index_size: u64,
    /// Size of the raw (uncompressed) file.
    pub original_file_size: u64,
    /// CRC of the jump table.
    pub index_crc: u32,
    /// Raw bytes per block.
    pub block_size: u32,
    /// Raw algorithm byte (1 LZ4, 2 ZSTD).
    pub algo: u8,
    /// Informational level.
    pub level: u8,
    /// Dictionary in use (never).
    pub use_dict: u8,
    /// Dictionary size (always 0, but honoured).
    pub dict_size: u32,
    /// Each stored block ends with a CRC32C.
    pub verify: bool,
}

impl ZFileHeader {
    /// A header for the given options, flags `HEADER | DATA | DIGEST`, index fields zero.
    pub fn new(algorithm: Algorithm, block_size: u32, verify: bool) -> Self {
        ZFileHeader {
            flags: flags::HEADER | flags::DATA | flags::DIGEST,
            digest: 0,
            index_offset: 0,
            index_size: 0,
            original_file_size: 0,
            index_crc: 0,
            block_size,
            algo: algorithm as u8,
            level: 0,
            use_dict: 0,
            dict_size: 0,
            verify,
        }
    }

    /// True if `buf` starts with both ZFile magics.
    pub fn has_magic(buf: &[u8]) -> bool {
        buf.len() >= 24 && buf[..8] == MAGIC0 && buf[8..24] == MAGIC1
    }

    /// Decodes 512 bytes; `None` if the magics are wrong.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        if buf.len() < super::HEADER_SIZE as usize || !Self::has_magic(buf) {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
        Some(ZFileHeader {
            digest: u32_at(28),
            flags: u64_at(32),
            index_offset: u64_at(40),
            index_size: u64_at(48),
            original_file_size: u64_at(56),
            index_crc: u32_at(64),
            block_size: u32_at(72),
            algo: buf[76],
            level: buf[77],
            use_dict: buf[78],
            dict_size: u32_at(84),
            verify: buf[88] != 0,
        })
    }

    /// Encodes to 512 bytes with the digest computed (when the digest flag is set).
    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..8].copy_from_slice(&MAGIC0);
        b[8..24].copy_from_slice(&MAGIC1);
        b[24..28].copy_from_slice(&STRUCT_SIZE.to_le_bytes());
        b[32..40].copy_from_slice(&self.flags.to_le_bytes());
        b[40..48].copy_from_slice(&self.index_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.index_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.original_file_size.to_le_bytes());
        b[64..68].copy_from_slice(&self.index_crc.to_le_bytes());
        b[72..76].copy_from_slice(&self.block_size.to_le_bytes());
        b[76] = self.algo;
        b[77] = self.level;
        b[78] = self.use_dict;
        b[84..88].copy_from_slice(&self.dict_size.to_le_bytes());
        b[88] = self.verify as u8;
        if self.flags & flags::DIGEST != 0 {
            let d = raw_crc32c(&b, SEED_HEADER);
            b[28..32].copy_from_slice(&d.to_le_bytes());
        }
        b
    }

    /// The digest of 512 raw bytes: raw CRC32C (seed 0) with the digest field taken as zero.
    pub fn digest_of(raw: &[u8]) -> u32 {
        let mut b = [0u8; 512];
        b.copy_from_slice(&raw[..512]);
        b[28..32].fill(0);
        raw_crc32c(&b, SEED_HEADER)
    }

    /// Tests a flag bit.
    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_digest() {
        let mut h = ZFileHeader::new(Algorithm::Zstd, 16384, true);
        h.index_offset = 1234;
        h.index_size = 3;
        h.original_file_size = 40000;
        h.index_crc = 0xDEADBEEF;
        let b = h.encode();
        let mut d = ZFileHeader::decode(&b).unwrap();
        assert_eq!(d.digest, ZFileHeader::digest_of(&b));
        d.digest = 0;
        assert_eq!(d, h);
    }
}
