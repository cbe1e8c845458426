//! Random reads of a ZFile's raw content (spec §4.5, §4.6).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::codec::Algorithm;
use super::header::{flags, ZFileHeader};
use super::{HEADER_SIZE, MAX_BLOCKS, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::crc::{raw_crc32c, SEED_BLOCK, SEED_HEADER};
use crate::io::ReadAt;
use crate::{Error, Result};

const FORMAT: &str = "ZFile";
/// The most stored bytes read at once for a run of whole blocks.
const MAX_RUN_STORED: u64 = 2 << 20;
/// Stored bytes before the jump table read along with it at open.
const TAIL_SLACK: u64 = 32 << 10;
/// Blocks per group of the compact offset table.
const GROUP_SHIFT: u32 = 6;

/// The last block decompressed for a partial read on this thread, so that reads smaller than a
/// block (or straddling blocks) do not decompress the same block again and again.
struct LastBlock {
    /// [`ZFile::id`] of the file it came from (0: none).
    file: u64,
    block: u64,
    data: Vec<u8>,
}

thread_local! {
    static STORED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Stored bytes of a run of blocks read at once.
    static RUN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static RAW: RefCell<LastBlock> = const { RefCell::new(LastBlock { file: 0, block: 0, data: Vec::new() }) };
}

/// Source of [`ZFile::id`]s.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An open ZFile: a [`ReadAt`] over the raw (decompressed) bytes.
pub struct ZFile {
    src: Arc<dyn ReadAt>,
    header: ZFileHeader,
    algo: Algorithm,
    block_size: u64,
    raw_size: u64,
    blocks: u64,
    /// Offset of every 64th block.
    bases: Vec<u64>,
    /// Offset of each block relative to its group's base; one extra entry for the end.
    rel: Vec<u32>,
    max_stored: usize,
    verify: bool,
    /// Unique among the ZFiles of the process (keys the per-thread block cache).
    id: u64,
}

impl ZFile {
    /// True if `buf` (the first 512 bytes of a file) is a ZFile header.
    pub fn detect(buf: &[u8]) -> bool {
        ZFileHeader::decode(buf).is_some_and(|h| h.has(flags::HEADER))
    }

    /// Opens `src` as a ZFile. With `verify`, every block read is checked against its CRC32C
    /// (when the file has them). All sizes are checked against the file before allocating.
    pub fn open(src: Arc<dyn ReadAt>, verify: bool) -> Result<Self> {
        let name = src.name().to_string();
        let size = src.size();
        let bad = |r: String| Error::format(&name, FORMAT, r);
        if size < 2 * HEADER_SIZE {
            return Err(bad(format!("{size} bytes is too small for a header and a trailer")));
        }
        let mut raw = [0u8; 512];
        src.read_meta_at(&mut raw, 0, "ZFile header")?;
        let h = ZFileHeader::decode(&raw).ok_or_else(|| bad("bad magic".into()))?;
        if !h.has(flags::HEADER) {
            return Err(bad("the header flag is not set at offset 0".into()));
        }
        if h.has(flags::DIGEST) && ZFileHeader::digest_of(&raw) != h.digest {
            return Err(bad(format!(
                "header digest {:#010x} does not match its content ({:#010x}): the header is corrupt",
                h.digest,
                ZFileHeader::digest_of(&raw)
            )));
        }
        let mut effective = h.clone();
        if !h.has(flags::HEADER_OVERWRITE) {
            if !h.has(flags::DATA) {
                return Err(bad("the header lacks the data flag".into()));
            }
            src.read_meta_at(&mut raw, size - HEADER_SIZE, "ZFile trailer")?;
            let t =
                ZFileHeader::decode(&raw).ok_or_else(|| bad("bad magic in the trailer (truncated file?)".into()))?;
            if t.has(flags::HEADER) || !t.has(flags::DATA) || !t.has(flags::SEALED) {
                return Err(bad(format!("trailer flags {:#x} are not those of a sealed trailer", t.flags & 0xff)));
            }
            if t.has(flags::DIGEST) && ZFileHeader::digest_of(&raw) != t.digest {
                return Err(bad("trailer digest does not match its content: the trailer is corrupt".into()));
            }
            effective.index_offset = t.index_offset;
            effective.index_size = t.index_size;
            effective.original_file_size = t.original_file_size;
            effective.index_crc = t.index_crc;
            effective.flags = (h.flags & !flags::DIGEST) | (t.flags & flags::DIGEST);
        }
        let algo =
            Algorithm::from_byte(h.algo).ok_or_else(|| bad(format!("unsupported compression algorithm {}", h.algo)))?;
        let bs = h.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(bad(format!("block size {bs} is not a power of two in 4096..65536")));
        }
        let (io, n) = (effective.index_offset, effective.index_size);
        if n > MAX_BLOCKS {
            return Err(bad(format!("{n} blocks exceeds the limit of {MAX_BLOCKS}")));
        }
        if io > size - HEADER_SIZE || n * 4 > size - HEADER_SIZE - io {
            return Err(bad(format!("jump table of {n} entries at {io} does not fit in the {size}-byte file")));
        }
        if n != effective.original_file_size.div_ceil(bs as u64) {
            return Err(bad(format!(
                "{n} blocks cannot hold {} bytes in blocks of {bs}",
                effective.original_file_size
            )));
        }
        // The LSMT trailer and index are in the last blocks, just before the table: read some
        // of them with it (a remote source keeps them for the reads that follow).
        let slack = TAIL_SLACK.min(io.saturating_sub(HEADER_SIZE));
        let mut table = vec![0u8; (slack + n * 4) as usize];
        src.read_meta_at(&mut table, io - slack, "ZFile jump table")?;
        let table = table.split_off(slack as usize);
        if effective.has(flags::DIGEST) && raw_crc32c(&table, SEED_HEADER) != effective.index_crc {
            return Err(bad(format!(
                "jump table CRC {:#010x} does not match the stored {:#010x}: the index is corrupt",
                raw_crc32c(&table, SEED_HEADER),
                effective.index_crc
            )));
        }
        let first = HEADER_SIZE + h.dict_size as u64;
        let crc_len = if h.verify { 4 } else { 0 };
        let max_len = algo.bound(bs as usize) as u64 + crc_len;
        let mut bases = Vec::with_capacity((n >> GROUP_SHIFT) as usize + 1);
        let mut rel = Vec::with_capacity(n as usize + 1);
        let mut off = first;
        let mut max_stored = 0;
        for (i, c) in table.chunks_exact(4).enumerate() {
            let len = u32::from_le_bytes(c.try_into().expect("4 bytes")) as u64;
            if len <= crc_len || len > max_len {
                return Err(bad(format!("block {i} has an impossible stored length {len}")));
            }
            if i & ((1 << GROUP_SHIFT) - 1) == 0 {
                bases.push(off);
            }
            rel.push((off - bases[i >> GROUP_SHIFT]) as u32);
            off += len;
            max_stored = max_stored.max(len as usize);
        }
        if off > io {
            return Err(bad(format!("compressed blocks end at {off}, past the jump table at {io}")));
        }
        if n & ((1 << GROUP_SHIFT) - 1) == 0 {
            bases.push(off);
        }
        rel.push((off - bases[(n >> GROUP_SHIFT) as usize]) as u32);
        Ok(ZFile {
            src,
            algo,
            block_size: bs as u64,
            raw_size: effective.original_file_size,
            blocks: n,
            bases,
            rel,
            max_stored,
            verify: verify && h.verify,
            header: effective,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The effective header (index fields from the trailer unless the header was overwritten).
    pub fn header(&self) -> &ZFileHeader {
        &self.header
    }

    /// Compression algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Raw bytes per block.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// True if blocks carry CRCs.
    pub fn has_checksums(&self) -> bool {
        self.header.verify
    }

    /// Byte offset of stored block `i` (`i == blocks()` gives the end of the last block).
    #[inline]
    pub fn block_offset(&self, i: u64) -> u64 {
        self.bases[(i >> GROUP_SHIFT) as usize] + self.rel[i as usize] as u64
    }

    /// Raw length of block `i`.
    #[inline]
    fn raw_len(&self, i: u64) -> usize {
        (self.raw_size - i * self.block_size).min(self.block_size) as usize
    }

    /// Checks the stored CRC of block `i` (whose stored bytes are `stored`).
    fn check_crc(&self, i: u64, off: u64, stored: &[u8]) -> Result<()> {
        let (data, crc) = stored.split_at(stored.len() - 4);
        let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        let got = raw_crc32c(data, SEED_BLOCK);
        if got != want {
            return Err(Error::BlockChecksum {
                file: self.src.name().to_string(),
                block: i,
                offset: off,
                len: stored.len() as u32,
                stored: want,
                computed: got,
            });
        }
        Ok(())
    }

    /// The error for a source that ended inside `len` stored bytes at `offset`.
    fn truncated(&self, what: String, offset: u64, len: usize) -> Error {
        Error::Truncated {
            file: self.src.name().to_string(),
            what,
            offset,
            end: offset + len as u64,
            size: self.src.size(),
        }
    }

    /// Whether block CRCs are checked on reads (the file has them and `verify` was asked).
    fn checks_crc(&self) -> bool {
        self.header.verify && self.verify
    }

    /// Decompresses block `i` from its stored bytes (with its CRC when the file has CRCs,
    /// already checked when wanted) into `dst` (exactly its raw length).
    fn decompress(&self, i: u64, stored: &[u8], dst: &mut [u8]) -> Result<()> {
        let data = if self.header.verify { &stored[..stored.len() - 4] } else { stored };
        self.algo.decompress(data, dst).map_err(|reason| Error::Decompress {
            file: self.src.name().to_string(),
            block: i,
            reason,
        })
    }

    /// Decompresses block `i` into `dst` (exactly its raw length).
    pub fn read_block(&self, i: u64, dst: &mut [u8]) -> Result<()> {
        let off = self.block_offset(i);
        let len = (self.block_offset(i + 1) - off) as usize;
        STORED.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < self.max_stored {
                s.resize(self.max_stored, 0);
            }
            let stored = &mut s[..len];
            // Not `read_exact_at`: its description would be formatted on every read.
            if self.src.read_at(stored, off)? < len {
                return Err(self.truncated(format!("ZFile block {i}"), off, len));
            }
            if self.checks_crc() {
                if let Err(e) = self.check_crc(i, off, stored) {
                    // A cached copy may be what is wrong: drop it and read once more.
                    if !self.src.invalidate(off, len as u64) {
                        return Err(e);
                    }
                    tracing::warn!(file = self.src.name(), block = i, "checksum failed: reading the block again");
                    if self.src.read_at(stored, off)? < len {
                        return Err(e);
                    }
                    if let Err(e) = self.check_crc(i, off, stored) {
                        // Still wrong: keep no copy of it either.
                        self.src.invalidate(off, len as u64);
                        return Err(e);
                    }
                }
            }
            self.decompress(i, stored, dst)
        })
    }

    /// Decompresses blocks `first..end` into `dst` (exactly their raw length), reading their
    /// stored bytes with one read of the source: a remote source then fetches them with one
    /// request instead of one per block. A block whose CRC fails is read again on its own
    /// ([`Self::read_block`] drops a cached copy and retries).
    fn read_blocks(&self, first: u64, end: u64, dst: &mut [u8]) -> Result<()> {
        let start = self.block_offset(first);
        let len = (self.block_offset(end) - start) as usize;
        RUN.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < len {
                s.resize(len, 0);
            }
            let stored = &mut s[..len];
            if self.src.read_at(stored, start)? < len {
                return Err(self.truncated(format!("ZFile blocks {first}..{end}"), start, len));
            }
            let mut at = 0usize;
            for i in first..end {
                let raw = self.raw_len(i);
                let out = &mut dst[at..at + raw];
                at += raw;
                let (o, e) = ((self.block_offset(i) - start) as usize, (self.block_offset(i + 1) - start) as usize);
                let block = &stored[o..e];
                if self.checks_crc() && self.check_crc(i, start + o as u64, block).is_err() {
                    self.read_block(i, out)?;
                } else {
                    self.decompress(i, block, out)?;
                }
            }
            Ok(())
        })
    }

    /// Checks the CRC of every block; fails on the first mismatch (naming the block), or if the
    /// file has no CRCs.
    pub fn verify_all(&self) -> Result<()> {
        if !self.header.verify {
            return Err(Error::format(self.src.name(), FORMAT, "the file has no block checksums to verify"));
        }
        let mut buf = vec![0u8; 4 << 20];
        let mut i = 0;
        while i < self.blocks {
            // Read many blocks at once.
            let start = self.block_offset(i);
            let mut j = i;
            while j < self.blocks && self.block_offset(j + 1) - start <= buf.len() as u64 {
                j += 1;
            }
            let end = self.block_offset(j);
            self.src.read_exact_at(&mut buf[..(end - start) as usize], start, "ZFile blocks")?;
            for b in i..j {
                let (o, e) = (self.block_offset(b), self.block_offset(b + 1));
                self.check_crc(b, o, &buf[(o - start) as usize..(e - start) as usize])?;
            }
            i = j;
        }
        Ok(())
    }
}

impl ReadAt for ZFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.raw_size {
            return Ok(0);
        }
        let len = buf.len().min((self.raw_size - offset) as usize);
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let i = pos / self.block_size;
            let in_block = (pos - i * self.block_size) as usize;
            let raw_len = self.raw_len(i);
            let n = (raw_len - in_block).min(len - done);
            if in_block == 0 && n == raw_len {
                // as many whole blocks as the buffer holds, their stored bytes in one read
                let mut j = i + 1;
                let mut raw = n;
                while j < self.blocks
                    && raw + self.raw_len(j) <= len - done
                    && self.block_offset(j + 1) - self.block_offset(i) <= MAX_RUN_STORED
                {
                    raw += self.raw_len(j);
                    j += 1;
                }
                if j - i == 1 {
                    self.read_block(i, &mut buf[done..done + n])?;
                } else {
                    self.read_blocks(i, j, &mut buf[done..done + raw])?;
                    done += raw;
                    continue;
                }
            } else {
                RAW.with(|r| -> Result<()> {
                    let r = &mut *r.borrow_mut();
                    if r.file != self.id || r.block != i {
                        if r.data.len() < self.block_size as usize {
                            r.data.resize(self.block_size as usize, 0);
                        }
                        r.file = 0;
                        self.read_block(i, &mut r.data[..raw_len])?;
                        (r.file, r.block) = (self.id, i);
                    }
                    buf[done..done + n].copy_from_slice(&r.data[in_block..in_block + n]);
                    Ok(())
                })?;
            }
            done += n;
        }
        Ok(len)
    }

    fn size(&self) -> u64 {
        self.raw_size
    }

    fn name(&self) -> &str {
        self.src.name()
    }

    /// Decompresses the blocks holding the range from their stored bytes, read from the source
    /// as metadata too; a block whose CRC fails makes it a normal read (which reads it again).
    fn read_meta_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.raw_size && e > offset);
        let Some(end) = end else { return self.read_exact_at(buf, offset, what) };
        let (first, last) = (offset / self.block_size, (end - 1) / self.block_size);
        let start = self.block_offset(first);
        let mut stored = vec![0u8; (self.block_offset(last + 1) - start) as usize];
        self.src.read_meta_at(&mut stored, start, what)?;
        let mut raw = vec![0u8; self.block_size as usize];
        for i in first..=last {
            let (o, e) = (self.block_offset(i), self.block_offset(i + 1));
            let block = &stored[(o - start) as usize..(e - start) as usize];
            if self.checks_crc() && self.check_crc(i, o, block).is_err() {
                self.src.invalidate(o, e - o);
                return self.read_exact_at(buf, offset, what);
            }
            let raw = &mut raw[..self.raw_len(i)];
            self.decompress(i, block, raw)?;
            // the part of this block inside the range
            let block_start = i * self.block_size;
            let (from, to) = (offset.max(block_start), end.min(block_start + raw.len() as u64));
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&raw[(from - block_start) as usize..(to - block_start) as usize]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemSource;
    use crate::zfile::{ZFileOptions, ZFileWriter};

    fn zfile(data: &[u8], name: &str) -> ZFile {
        let mut w = ZFileWriter::new(Vec::new(), ZFileOptions::default()).unwrap();
        w.push(data).unwrap();
        let (out, _) = w.finish().unwrap();
        ZFile::open(Arc::new(MemSource::new(out, name)), true).unwrap()
    }

    #[test]
    fn partial_reads_through_the_block_cache() {
        let a: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let b: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (za, zb) = (zfile(&a, "a"), zfile(&b, "b"));
        // Small sequential reads, interleaved between two files with the same block numbers.
        for step in [512usize, 1000, 3000, 4096, 5000] {
            let mut pos = 0;
            while pos < a.len() {
                let mut x = vec![0u8; step];
                let n = za.read_at(&mut x, pos as u64).unwrap();
                assert_eq!(&x[..n], &a[pos..pos + n]);
                let n = zb.read_at(&mut x, pos as u64).unwrap();
                assert_eq!(&x[..n], &b[pos..pos + n]);
                pos += step;
            }
        }
        // From another thread (its own cache).
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut x = vec![0u8; 100];
                za.read_at(&mut x, 4090).unwrap();
                assert_eq!(x, a[4090..4190]);
            });
        });
    }

    #[test]
    fn a_truncated_block_names_the_block() {
        let data = vec![1u8; 20_000];
        let mut w = ZFileWriter::new(Vec::new(), ZFileOptions::default()).unwrap();
        w.push(&data).unwrap();
        let (out, _) = w.finish().unwrap();
        let z = ZFile::open(Arc::new(MemSource::new(out, "z")), true).unwrap();
        let (off, end) = (z.block_offset(2), z.block_offset(3));
        // A source that ends inside block 2.
        let short = Window(Arc::new(MemSource::new(vec![0u8; off as usize + 1], "z")), z.src.size());
        let z = ZFile { src: Arc::new(short), ..z };
        let err = z.read_block(2, &mut [0u8; 4096]).unwrap_err();
        match err {
            Error::Truncated { what, offset, end: e, .. } => {
                assert_eq!((what.as_str(), offset, e), ("ZFile block 2", off, end));
            }
            e => panic!("{e}"),
        }
    }

    /// A source that counts its reads and, like a cache holding a bad copy, serves one byte
    /// flipped until it is invalidated.
    struct Flaky {
        data: Vec<u8>,
        bad_at: std::sync::Mutex<Option<u64>>,
        reads: AtomicU64,
    }

    impl ReadAt for Flaky {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let n = buf.len().min(self.data.len().saturating_sub(offset as usize));
            buf[..n].copy_from_slice(&self.data[offset as usize..offset as usize + n]);
            if let Some(b) = *self.bad_at.lock().unwrap() {
                if (offset..offset + n as u64).contains(&b) {
                    buf[(b - offset) as usize] ^= 0xff;
                }
            }
            Ok(n)
        }
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn name(&self) -> &str {
            "flaky"
        }
        fn invalidate(&self, offset: u64, len: u64) -> bool {
            let mut b = self.bad_at.lock().unwrap();
            if b.is_some_and(|b| (offset..offset + len).contains(&b)) {
                *b = None;
            }
            true
        }
    }

    #[test]
    fn whole_blocks_are_read_from_the_source_at_once_and_a_bad_copy_is_read_again() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut w = ZFileWriter::new(Vec::new(), ZFileOptions::default()).unwrap();
        w.push(&data).unwrap();
        let (out, _) = w.finish().unwrap();
        let src = Arc::new(Flaky { data: out, bad_at: std::sync::Mutex::new(None), reads: AtomicU64::new(0) });
        let z = ZFile::open(src.clone(), true).unwrap();
        let before = src.reads.load(Ordering::Relaxed);
        // 20 whole blocks plus a part of one at each end: one read for the run, one per part
        let mut x = vec![0u8; 20 * 4096 + 200];
        assert_eq!(z.read_at(&mut x, 4096 - 100).unwrap(), x.len());
        assert_eq!(x, data[4096 - 100..4096 - 100 + x.len()]);
        assert_eq!(src.reads.load(Ordering::Relaxed) - before, 3);
        // a bad byte inside block 7 of a run: that block is read again, the data is right
        *src.bad_at.lock().unwrap() = Some(z.block_offset(7) + 10);
        let mut x = vec![0u8; 16 * 4096];
        assert_eq!(z.read_at(&mut x, 0).unwrap(), x.len());
        assert_eq!(x, data[..x.len()]);
        assert!(src.bad_at.lock().unwrap().is_none(), "the bad copy was dropped");
    }

    /// A source that reports a size larger than what it can read.
    struct Window(Arc<MemSource>, u64);

    impl ReadAt for Window {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            self.0.read_at(buf, offset)
        }
        fn size(&self) -> u64 {
            self.1
        }
        fn name(&self) -> &str {
            self.0.name()
        }
    }
}
