//! The tar wrapper around a layer blob (spec §5): one entry `overlaybd.commit`, optionally
//! preceded by one PAX header carrying its size.

use crate::io::ReadAt;
use crate::{Error, Result};

const BLOCK: u64 = 512;
const FORMAT: &str = "tar wrapper";
/// Name of the single entry.
pub const ENTRY_NAME: &str = "overlaybd.commit";
/// Name of the PAX extended header.
pub const PAX_NAME: &str = "overlaybd.pax";
/// Size of the headers the writer puts before the payload.
pub const WRITER_HEADER_LEN: u64 = 3 * BLOCK;

/// Where the payload of a tar-wrapped blob is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TarPayload {
    /// Byte offset of the payload.
    pub offset: u64,
    /// Payload size.
    pub size: u64,
    /// A PAX extended header preceded the entry.
    pub pax: bool,
}

fn header_sum_ok(h: &[u8]) -> bool {
    let stored = match parse_octal(&h[148..156]) {
        Some(v) => v,
        None => return false,
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    stored == unsigned || stored as i64 == signed
}

/// True if `h` (a 512-byte block) is a POSIX ustar header with a valid checksum; GNU tars
/// (`"ustar  \0"`) are not, as in the reference.
pub fn is_ustar_header(h: &[u8]) -> bool {
    h.len() >= 512 && &h[257..262] == b"ustar" && &h[263..265] == b"00" && header_sum_ok(h)
}

/// Parses a numeric tar field: octal (space/NUL padded) or base-256 (high bit set).
fn parse_octal(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v: u64 = (f[0] & 0x7f) as u64;
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let s: Vec<u8> = f.iter().copied().skip_while(|&b| b == b' ').take_while(|&b| b != 0 && b != b' ').collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// Finds the `size` record of PAX data.
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > rest.len() {
            return None;
        }
        let rec = &rest[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(v) = rec.strip_prefix(b"size=") {
            return std::str::from_utf8(v).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    None
}

/// If `src` is tar-wrapped, where its payload is; `None` if it is not a tar.
pub fn detect(src: &dyn ReadAt) -> Result<Option<TarPayload>> {
    let name = src.name();
    let size = src.size();
    let mut h = [0u8; 512];
    if size < 512 {
        return Ok(None);
    }
    src.read_meta_at(&mut h, 0, "tar header")?;
    if !is_ustar_header(&h) {
        return Ok(None);
    }
    let mut pos = 0u64;
    let mut pax: Option<u64> = None;
    let mut seen_pax = false;
    for _ in 0..8 {
        if pos > 0 {
            src.read_meta_at(&mut h, pos, "tar header")?;
            if !is_ustar_header(&h) {
                return Err(Error::format(name, FORMAT, format!("bad tar header at {pos}")));
            }
        }
        let len = parse_octal(&h[124..136])
            .ok_or_else(|| Error::format(name, FORMAT, format!("bad size field in the tar header at {pos}")))?;
        match h[156] {
            b'x' => {
                if len > 64 * 1024 {
                    return Err(Error::format(name, FORMAT, format!("PAX header of {len} bytes is too large")));
                }
                let mut data = vec![0u8; len as usize];
                src.read_meta_at(&mut data, pos + BLOCK, "PAX records")?;
                pax = pax_size(&data).filter(|&s| s > 0).or(pax);
                seen_pax = true;
                pos += BLOCK + len.div_ceil(BLOCK) * BLOCK;
            }
            b'0' | 0 => {
                let size_of_entry = pax.unwrap_or(len);
                let offset = pos + BLOCK;
                if offset.checked_add(size_of_entry).is_none_or(|e| e > size) {
                    return Err(Error::Truncated {
                        file: name.to_string(),
                        what: "tar payload".into(),
                        offset,
                        end: offset.saturating_add(size_of_entry),
                        size,
                    });
                }
                return Ok(Some(TarPayload { offset, size: size_of_entry, pax: seen_pax }));
            }
            t => {
                return Err(Error::format(name, FORMAT, format!("unexpected tar entry type {:?} at {pos}", t as char)))
            }
        }
    }
    Err(Error::format(name, FORMAT, "no regular file entry in the first headers"))
}

fn put_octal(field: &mut [u8], v: u64, width: usize, tail: &[u8]) {
    let s = format!("{v:>width$o}");
    field[..width].copy_from_slice(s.as_bytes());
    field[width..width + tail.len()].copy_from_slice(tail);
}

fn finish_header(h: &mut [u8; 512]) {
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let mut f = [0u8; 8];
    put_octal(&mut f, sum, 6, b" \0");
    h[148..156].copy_from_slice(&f);
}

/// The PAX record `"NN size=<n>\n"`, whose length counts its own digits.
fn pax_record(payload: u64) -> String {
    let body = format!(" size={payload}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

/// The 1536 bytes the reference writes before the payload: PAX header, PAX record, ustar
/// header (size 0) for an entry of `payload` bytes; `mode` is the output file's `st_mode`.
pub fn headers(payload: u64, mode: u32) -> Vec<u8> {
    let mut out = vec![0u8; WRITER_HEADER_LEN as usize];
    let rec = pax_record(payload);
    let mut h = [0u8; 512];
    h[..PAX_NAME.len()].copy_from_slice(PAX_NAME.as_bytes());
    put_octal(&mut h[124..136], rec.len() as u64, 11, b" ");
    h[156] = b'x';
    finish_header(&mut h);
    out[..512].copy_from_slice(&h);
    out[512..512 + rec.len()].copy_from_slice(rec.as_bytes());
    let mut h = [0u8; 512];
    h[..ENTRY_NAME.len()].copy_from_slice(ENTRY_NAME.as_bytes());
    put_octal(&mut h[100..108], mode as u64, 6, b" \0");
    put_octal(&mut h[108..116], 0, 6, b" \0");
    put_octal(&mut h[116..124], 0, 6, b" \0");
    put_octal(&mut h[124..136], 0, 11, b" ");
    put_octal(&mut h[136..148], 0, 11, b" ");
    h[156] = b'0';
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    finish_header(&mut h);
    out[1024..].copy_from_slice(&h);
    out
}

/// What follows a payload of `payload` bytes: zero padding to 512 and two zero blocks.
pub fn trailer(payload: u64) -> Vec<u8> {
    vec![0u8; (payload.div_ceil(BLOCK) * BLOCK - payload + 2 * BLOCK) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;

    #[test]
    fn pax_record_counts_itself() {
        assert_eq!(pax_record(639491), "15 size=639491\n");
        assert_eq!(pax_record(1), "9 size=1\n");
        assert_eq!(pax_record(12345678), "17 size=12345678\n");
    }

    #[test]
    fn writes_what_it_reads() {
        let mut blob = headers(1000, 0o100644);
        blob.extend(std::iter::repeat_n(7u8, 1000));
        blob.extend(trailer(1000));
        assert_eq!(blob.len() % 512, 0);
        let p = detect(&MemSource::new(blob, "t")).unwrap().unwrap();
        assert_eq!(p, TarPayload { offset: 1536, size: 1000, pax: true });
    }

    #[test]
    fn plain_files_are_not_tars() {
        assert_eq!(detect(&MemSource::new(vec![0u8; 4096], "z")).unwrap(), None);
    }
}
