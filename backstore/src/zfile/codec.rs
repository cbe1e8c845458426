//! Block codecs: LZ4 raw block format and one ZSTD frame per block (spec §4.4).

/// Compression algorithm of a ZFile (the `algo` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Algorithm {
    /// LZ4 raw block format, default fast mode.
    Lz4 = 1,
    /// One complete ZSTD frame per block, level 3.
    Zstd = 2,
}

/// ZSTD level the reference always uses.
pub const ZSTD_LEVEL: i32 = 3;

impl Algorithm {
    /// From the header byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Algorithm::Lz4),
            2 => Some(Algorithm::Zstd),
            _ => None,
        }
    }

    /// From a tool's `--algorithm` value; like the reference, anything but `zstd` means LZ4.
    pub fn from_name_lenient(name: &str) -> Self {
        if name.eq_ignore_ascii_case("zstd") {
            Algorithm::Zstd
        } else {
            Algorithm::Lz4
        }
    }

    /// Upper bound of the compressed size of `n` raw bytes.
    pub fn bound(self, n: usize) -> usize {
        match self {
            Algorithm::Lz4 => lz4_flex::block::get_maximum_output_size(n),
            Algorithm::Zstd => zstd::zstd_safe::compress_bound(n),
        }
    }

    /// Compresses `src` into `dst` (at least [`Self::bound`] bytes); returns the length.
    pub fn compress(self, src: &[u8], dst: &mut [u8]) -> Result<usize, String> {
        match self {
            Algorithm::Lz4 => lz4_flex::block::compress_into(src, dst).map_err(|e| e.to_string()),
            Algorithm::Zstd => zstd::bulk::compress_to_buffer(src, dst, ZSTD_LEVEL).map_err(|e| e.to_string()),
        }
    }

    /// Decompresses `src` into exactly `dst.len()` bytes.
    pub fn decompress(self, src: &[u8], dst: &mut [u8]) -> Result<(), String> {
        let n = match self {
            Algorithm::Lz4 => lz4_flex::block::decompress_into(src, dst).map_err(|e| e.to_string())?,
            Algorithm::Zstd => ZSTD_DCTX.with(|d| {
                zstd::zstd_safe::DCtx::decompress(&mut d.borrow_mut(), dst, src)
                    .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string())
            })?,
        };
        if n != dst.len() {
            return Err(format!("decompressed to {n} bytes, expected {}", dst.len()));
        }
        Ok(())
    }
}

thread_local! {
    static ZSTD_DCTX: std::cell::RefCell<zstd::zstd_safe::DCtx<'static>> = std::cell::RefCell::new(zstd::zstd_safe::DCtx::create());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let data: Vec<u8> = (0..10000u32).map(|i| (i * 7 % 251) as u8).collect();
        for a in [Algorithm::Lz4, Algorithm::Zstd] {
            let mut c = vec![0u8; a.bound(data.len())];
            let n = a.compress(&data, &mut c).unwrap();
            let mut d = vec![0u8; data.len()];
            a.decompress(&c[..n], &mut d).unwrap();
            assert_eq!(d, data);
            let mut short = vec![0u8; data.len() + 1];
            assert!(a.decompress(&c[..n], &mut short).is_err());
            assert!(a.decompress(&c[..n / 2], &mut d).is_err());
        }
    }
}
