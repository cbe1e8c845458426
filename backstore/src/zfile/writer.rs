//! Streaming ZFile writer (spec §4.7), with parallel block compression.

use std::io::{self, Seek, SeekFrom, Write};

use rayon::prelude::*;

use super::codec::Algorithm;
use super::header::{flags, ZFileHeader};
use super::{HEADER_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::crc::{raw_crc32c, SEED_BLOCK, SEED_HEADER};
use crate::{Error, Result};

/// How to compress.
#[derive(Clone, Copy, Debug)]
pub struct ZFileOptions {
    /// LZ4 (default) or ZSTD.
    pub algorithm: Algorithm,
    /// Raw bytes per block: a power of two in 4096..=65536 (default 4096).
    pub block_size: u32,
    /// Append a CRC32C to each block (default, and what the reference does).
    pub verify: bool,
    /// Compression threads (1: compress inline).
    pub threads: usize,
}

impl Default for ZFileOptions {
    fn default() -> Self {
        ZFileOptions { algorithm: Algorithm::Lz4, block_size: 4096, verify: true, threads: 1 }
    }
}

/// Writes a ZFile to `out` as raw bytes are written to it (it implements [`Write`]).
/// Call [`ZFileWriter::finish`] at the end; dropping it without finishing leaves no trailer.
pub struct ZFileWriter<W: Write> {
    out: W,
    opts: ZFileOptions,
    header: ZFileHeader,
    pos: u64,
    lens: Vec<u32>,
    pending: Vec<u8>,
    raw_size: u64,
    batch: usize,
    pool: Option<rayon::ThreadPool>,
}

fn werr(e: io::Error) -> Error {
    Error::io("ZFile output", "write", e)
}

impl<W: Write> ZFileWriter<W> {
    /// Starts a ZFile: writes the provisional header (flags `0x13`).
    pub fn new(mut out: W, opts: ZFileOptions) -> Result<Self> {
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(Error::InvalidArgument(format!("block size {bs} is not a power of two in 4096..65536")));
        }
        let header = ZFileHeader::new(opts.algorithm, bs, opts.verify);
        out.write_all(&header.encode()).map_err(werr)?;
        let threads = opts.threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} compression threads: {e}")))?,
            )
        } else {
            None
        };
        let batch = bs as usize * if threads > 1 { 64 * threads } else { 1 };
        Ok(ZFileWriter {
            out,
            opts,
            header,
            pos: HEADER_SIZE,
            lens: Vec::new(),
            pending: Vec::with_capacity(batch),
            raw_size: 0,
            batch,
            pool,
        })
    }

    fn compress_one(algo: Algorithm, verify: bool, raw: &[u8]) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; algo.bound(raw.len()) + 4];
        let n = algo.compress(raw, &mut buf).map_err(|e| Error::InvalidArgument(format!("compression failed: {e}")))?;
        buf.truncate(n);
        if verify {
            let crc = raw_crc32c(&buf, SEED_BLOCK);
            buf.extend_from_slice(&crc.to_le_bytes());
        }
        Ok(buf)
    }

    /// Compresses and writes the whole blocks in `pending` (and a short last one if `last`).
    fn drain(&mut self, last: bool) -> Result<()> {
        let bs = self.opts.block_size as usize;
        let whole = if last { self.pending.len() } else { self.pending.len() / bs * bs };
        if whole == 0 {
            return Ok(());
        }
        let (algo, verify) = (self.opts.algorithm, self.opts.verify);
        let chunks: Vec<&[u8]> = self.pending[..whole].chunks(bs).collect();
        let stored: Vec<Result<Vec<u8>>> = match &self.pool {
            Some(pool) => pool.install(|| chunks.par_iter().map(|c| Self::compress_one(algo, verify, c)).collect()),
            None => chunks.iter().map(|c| Self::compress_one(algo, verify, c)).collect(),
        };
        for s in stored {
            let s = s?;
            self.out.write_all(&s).map_err(werr)?;
            self.pos += s.len() as u64;
            self.lens.push(s.len() as u32);
        }
        self.pending.drain(..whole);
        Ok(())
    }

    /// Adds raw bytes.
    pub fn push(&mut self, mut data: &[u8]) -> Result<()> {
        self.raw_size += data.len() as u64;
        while !data.is_empty() {
            let n = (self.batch - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() == self.batch {
                self.drain(false)?;
            }
        }
        Ok(())
    }

    /// Writes the last block, the jump table and the trailer. Returns the output and the final
    /// header (flags `0x1B`), which [`overwrite_header`] can put at offset 0.
    pub fn finish(mut self) -> Result<(W, ZFileHeader)> {
        self.drain(true)?;
        let mut table = Vec::with_capacity(self.lens.len() * 4);
        for l in &self.lens {
            table.extend_from_slice(&l.to_le_bytes());
        }
        self.out.write_all(&table).map_err(werr)?;
        let mut h = self.header.clone();
        h.index_offset = self.pos;
        h.index_size = self.lens.len() as u64;
        h.original_file_size = self.raw_size;
        h.index_crc = raw_crc32c(&table, SEED_HEADER);
        let mut trailer = h.clone();
        trailer.flags = flags::DATA | flags::SEALED | flags::DIGEST;
        self.out.write_all(&trailer.encode()).map_err(werr)?;
        self.out.flush().map_err(werr)?;
        h.flags = flags::HEADER | flags::DATA | flags::HEADER_OVERWRITE | flags::DIGEST;
        Ok((self.out, h))
    }

    /// Total size of the output so far (excluding the trailer).
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl<W: Write> Write for ZFileWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Rewrites the header of a finished ZFile whose first byte is at `base` in `out` (what
/// `overlaybd-commit -z` does for local output).
pub fn overwrite_header<F: Write + Seek>(out: &mut F, base: u64, header: &ZFileHeader) -> Result<()> {
    out.seek(SeekFrom::Start(base)).map_err(werr)?;
    out.write_all(&header.encode()).map_err(werr)?;
    out.seek(SeekFrom::End(0)).map_err(werr)?;
    Ok(())
}
