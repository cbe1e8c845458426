//! The bodies of the fuzz targets, shared with the stable test `backstore/tests/bad_input.rs`
//! (which includes this file with `#[path]`), so CI runs the same code without nightly.
//!
//! Each body must return (`Ok` or `Err`) for any input: a panic, a hang or a huge allocation is
//! a bug in the library. The bodies also panic on a broken invariant (a write that does not read
//! back), so the fuzzer reports it.

use std::path::Path;
use std::sync::Arc;

use backstore::detect::open_layer;
use backstore::io::MemSource;
use backstore::lsmt::header::{flags, LsmtHeader};
use backstore::lsmt::writable::Recovery;
use backstore::lsmt::WritableLayer;
use backstore::uuid::LayerUuid;
use backstore::SECTOR;

/// A device this small is read whole, every sector; larger ones only where the index maps.
pub const FULL_READ_LIMIT: u64 = 4 << 20;
/// At most this many bytes are read per input (entries may all point at the same data).
pub const READ_BUDGET: u64 = 32 << 20;

/// What a layer read back: the whole device (if small) and each mapped entry's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// Virtual size from the trailer.
    pub virtual_size: u64,
    /// Every sector of the device, if `virtual_size <= FULL_READ_LIMIT`.
    pub full: Option<Vec<u8>>,
    /// `(first sector, bytes)` of each index entry, in index order, within the read budget.
    pub mapped: Vec<(u64, Vec<u8>)>,
}

/// Fuzz target `open_layer`: opens `data` as a layer blob in any wrapping (tar, ZFile, LSMT)
/// with block CRCs verified, then reads the whole device if it is small and every mapped entry.
pub fn open_layer_body(data: &[u8]) -> backstore::Result<Contents> {
    let layer = open_layer(Arc::new(MemSource::new(data.to_vec(), "fuzz")), true)?;
    let mut out = Contents { virtual_size: layer.virtual_size(), ..Contents::default() };
    let mut budget = READ_BUDGET;
    let vs = out.virtual_size / SECTOR * SECTOR;
    if vs <= FULL_READ_LIMIT {
        let mut full = vec![0u8; vs as usize];
        for (i, chunk) in full.chunks_mut(64 << 10).enumerate() {
            layer.read_at(chunk, i as u64 * (64 << 10))?;
        }
        budget -= vs;
        out.full = Some(full);
    }
    for seg in layer.index().segments() {
        let len = seg.length as u64 * SECTOR;
        if len > budget {
            break;
        }
        budget -= len;
        let mut buf = vec![0u8; len as usize];
        layer.read_at(&mut buf, seg.offset * SECTOR)?;
        let mut direct = vec![0u8; len as usize];
        layer.read_segment(seg, &mut direct)?;
        assert_eq!(buf, direct, "a read of entry {seg:?} differs from its segment read");
        out.mapped.push((seg.offset, buf));
    }
    Ok(out)
}

/// Sectors in the data file that [`writable_index_body`] writes next to the fuzzed index.
pub const FUZZ_DATA_SECTORS: u64 = 64;

/// The data file [`writable_index_body`] uses: a writable data header and
/// [`FUZZ_DATA_SECTORS`] sectors, sector `k` filled with the byte `k`.
pub fn fuzz_data_file() -> Vec<u8> {
    let h = LsmtHeader::new(flags::HEADER | flags::DATA, 1 << 20, LayerUuid::NIL, LayerUuid::NIL);
    let mut d = h.encode();
    for k in 0..FUZZ_DATA_SECTORS {
        d.extend(std::iter::repeat_n(k as u8, SECTOR as usize));
    }
    d
}

/// A valid index file header for [`fuzz_data_file`].
pub fn fuzz_index_header() -> Vec<u8> {
    let mut h = LsmtHeader::new(flags::HEADER, 1 << 20, LayerUuid::NIL, LayerUuid::NIL);
    h.index_offset = 4096;
    h.encode()
}

/// Fuzz target `writable_index`: the first byte picks the mode, the rest is the index file
/// (bit 0: after a valid index header, so the log entries themselves are fuzzed; bit 1:
/// [`Recovery::RollBack`]; bit 2: open writable). Next to it goes [`fuzz_data_file`]. If the
/// layer opens, every mapped sector is read; if it is writable, a write must read back, also
/// after reopening.
pub fn writable_index_body(input: &[u8], dir: &Path) -> backstore::Result<u64> {
    let Some((&mode, rest)) = input.split_first() else {
        return Ok(0);
    };
    let data_path = dir.join("data");
    let index_path = dir.join("index");
    let mut index = if mode & 1 != 0 { fuzz_index_header() } else { Vec::new() };
    index.extend_from_slice(rest);
    std::fs::write(&data_path, fuzz_data_file()).expect("write the data file");
    std::fs::write(&index_path, &index).expect("write the index file");
    let recovery = if mode & 2 != 0 { Recovery::RollBack } else { Recovery::Strict };
    let writable = mode & 4 != 0;
    let layer = WritableLayer::open(&data_path, &index_path, writable, recovery)?;
    let mut sum = 0u64;
    let mut budget = READ_BUDGET;
    for seg in layer.segments() {
        let len = seg.length as u64 * SECTOR;
        if len > budget {
            break;
        }
        budget -= len;
        let mut buf = vec![0u8; len as usize];
        layer.read_segment(&seg, &mut buf)?;
        sum = sum.wrapping_add(buf.iter().map(|&b| b as u64).sum::<u64>());
    }
    if writable {
        let lba = u64::from(mode >> 3) * 8;
        let pattern: Vec<u8> = (0..2 * SECTOR as usize).map(|i| (i as u8) ^ 0xA5).collect();
        layer.write_at(&pattern, lba * SECTOR)?;
        let check = |l: &WritableLayer, when: &str| {
            let mut pieces = Vec::new();
            l.pieces(lba, lba + 2, &mut pieces);
            let mut got = vec![0u8; pattern.len()];
            for p in pieces {
                match p {
                    backstore::lsmt::index::Piece::Mapped(s) => {
                        let at = ((s.offset - lba) * SECTOR) as usize;
                        l.read_segment(&s, &mut got[at..at + s.length as usize * SECTOR as usize])?;
                    }
                    backstore::lsmt::index::Piece::Hole { .. } => {
                        panic!("{when}: the sectors just written are unmapped")
                    }
                }
            }
            assert!(got == pattern, "{when}: the sectors just written read back wrong");
            Ok::<_, backstore::Error>(())
        };
        check(&layer, "before reopening")?;
        layer.flush()?;
        drop(layer);
        let again = WritableLayer::open(&data_path, &index_path, false, recovery)
            .unwrap_or_else(|e| panic!("a layer that opened and took a write does not reopen: {e}"));
        check(&again, "after reopening")?;
    }
    Ok(sum)
}
