//! Positional reads: the one interface every format reads its bytes through.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::{Error, Result};

/// A source of bytes read by position, shareable between threads.
///
/// `read_at` may return fewer bytes than asked only at the end of the source.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (short only at EOF).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;

    /// Current size of the source in bytes.
    fn size(&self) -> u64;

    /// A name for error messages (normally the path).
    fn name(&self) -> &str;

    /// Reads exactly `buf.len()` bytes at `offset` or fails with [`Error::Truncated`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        let n = self.read_at(buf, offset)?;
        if n < buf.len() {
            return Err(Error::Truncated {
                file: self.name().to_string(),
                what: what.to_string(),
                offset,
                end: offset + buf.len() as u64,
                size: self.size(),
            });
        }
        Ok(())
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
}

/// A read-only local file whose size does not change while it is open (a layer blob).
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    name: String,
    size: u64,
}

impl LocalFile {
    /// Opens `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(&name, "open", e))?;
        Self::from_file(file, name)
    }

    /// Wraps an open file; `name` is used in error messages.
    pub fn from_file(file: File, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let size = file.metadata().map_err(|e| Error::io(&name, "stat", e))?.len();
        Ok(LocalFile { file, name, size })
    }
}

/// Reads into `buf` at `offset` with `pread`, retrying on EINTR and short reads; stops at EOF.
pub fn pread_full(file: &File, name: &str, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(name, format!("read {} bytes at {}", buf.len(), offset), e)),
        }
    }
    Ok(done)
}

/// Writes all of `buf` at `offset` with `pwrite`.
pub fn pwrite_all(file: &File, name: &str, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset).map_err(|e| Error::io(name, format!("write {} bytes at {}", buf.len(), offset), e))
}

impl ReadAt for LocalFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let len = buf.len().min((self.size - offset) as usize);
        pread_full(&self.file, &self.name, &mut buf[..len], offset)
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A byte range of another source (the payload of a tar wrapper).
pub struct Window {
    inner: Arc<dyn ReadAt>,
    offset: u64,
    len: u64,
}

impl Window {
    /// The bytes `offset..offset+len` of `inner`.
    pub fn new(inner: Arc<dyn ReadAt>, offset: u64, len: u64) -> Self {
        Window { inner, offset, len }
    }
}

impl ReadAt for Window {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        self.inner.read_at(&mut buf[..n], self.offset + offset)
    }
    fn size(&self) -> u64 {
        self.len
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

/// An in-memory source, for tests and small metadata.
pub struct MemSource {
    data: Vec<u8>,
    name: String,
}

impl MemSource {
    /// Wraps `data`.
    pub fn new(data: Vec<u8>, name: impl Into<String>) -> Self {
        MemSource { data, name: name.into() }
    }
}

impl ReadAt for MemSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.data.len() as u64 {
            return Ok(0);
        }
        let src = &self.data[offset as usize..];
        let n = buf.len().min(src.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn name(&self) -> &str {
        &self.name
    }
}
