//! The layer stream: a file, a FIFO or stdin; plain tar, gzip or zstd (found by magic); its
//! sha256 taken as it is read, for `--checksum`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Reads through, counting and (if asked) hashing what passes.
pub struct Hashing<R> {
    inner: R,
    hash: Option<Sha256>,
    bytes: u64,
}

impl<R: Read> Hashing<R> {
    /// Counts what is read from `inner`, and hashes it if `hash`.
    pub fn new(inner: R, hash: bool) -> Self {
        Hashing { inner, hash: hash.then(Sha256::new), bytes: 0 }
    }

    /// Reads the rest, then returns the hex sha256 (if hashing) and the byte count.
    pub fn finish(mut self) -> std::io::Result<(Option<String>, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((self.hash.map(|h| hex::encode(h.finalize())), self.bytes))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Opens `path` ("-" for stdin) and undoes gzip or zstd compression.
pub fn open(path: &Path) -> Result<Box<dyn Read + Send>> {
    let name = path.display().to_string();
    let raw: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).map_err(|e| Error::io(&name, "open", e))?)
    };
    let mut r = BufReader::with_capacity(1 << 20, raw);
    let head = r.fill_buf().map_err(|e| Error::io(&name, "read", e))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(|e| Error::io(&name, "start zstd", e))?)
    } else {
        Box::new(r)
    })
}
