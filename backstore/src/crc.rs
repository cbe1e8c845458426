//! The "raw" CRC32C used everywhere in overlaybd.
//!
//! Castagnoli polynomial, the register initialised to a seed, no pre- or post-inversion
//! (spec §2). It relates to the standard CRC-32C by
//! `raw(data, seed) == std_append(!seed, data) ^ 0xFFFF_FFFF`, which lets the hardware-accelerated
//! `crc32c` crate do the work.

/// Seed of the ZFile header digest and of the jump-table CRC.
pub const SEED_HEADER: u32 = 0;
/// Seed of the per-block CRC of a ZFile.
pub const SEED_BLOCK: u32 = 100_007;

/// Raw CRC32C of `data` with the register initialised to `seed`.
#[inline]
pub fn raw_crc32c(data: &[u8], seed: u32) -> u32 {
    crc32c::crc32c_append(!seed, data) ^ 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitwise(data: &[u8], seed: u32) -> u32 {
        let mut crc = seed;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        crc
    }

    #[test]
    fn matches_the_bitwise_definition() {
        for seed in [0, SEED_BLOCK, 0xFFFF_FFFF, 0x1234_5678] {
            for data in [&b""[..], b"123456789", &[0u8; 4096][..], b"overlaybd"] {
                assert_eq!(raw_crc32c(data, seed), bitwise(data, seed));
            }
        }
    }

    #[test]
    fn relates_to_standard_crc32c() {
        assert_eq!(raw_crc32c(b"123456789", 0xFFFF_FFFF) ^ 0xFFFF_FFFF, 0xE306_9283);
    }
}
