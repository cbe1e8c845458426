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

    /// Forgets any cached copy of `len` bytes at `offset`, because a reader found them wrong
    /// (a checksum failed); returns true if reading again may give other bytes. Sources without
    /// a cache return false.
    fn invalidate(&self, _offset: u64, _len: u64) -> bool {
        false
    }

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

    /// Reads exactly `buf.len()` bytes at `offset` that the caller keeps: format metadata read
    /// once when a layer opens (headers, trailers, indexes). A source with a chunk cache may
    /// fetch just these bytes rather than whole chunks, so opening a lazily pulled layer costs
    /// its metadata and little more; other sources read as [`Self::read_exact_at`].
    fn read_meta_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        self.read_exact_at(buf, offset, what)
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
    fn invalidate(&self, offset: u64, len: u64) -> bool {
        (**self).invalidate(offset, len)
    }
    fn read_meta_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        (**self).read_meta_at(buf, offset, what)
    }
}

/// A read-only local file whose size does not change while it is open (a layer blob).
///
/// Reads are served from a shared read-only memory mapping of the file when one can be made
/// (saving a system call per read), otherwise with `pread`. The mapping is safe against the
/// file being truncated or failing to page in underneath: see [`mapped`] — such a read falls
/// back to `pread`, which reports what it finds, exactly as an unmapped file does.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    name: String,
    size: u64,
    map: Option<mapped::Mapping>,
}

impl LocalFile {
    /// Opens `path` read-only (memory-mapped if possible).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(&name, "open", e))?;
        Self::from_file(file, name)
    }

    /// Wraps an open file (memory-mapped if possible); `name` is used in error messages.
    pub fn from_file(file: File, name: impl Into<String>) -> Result<Self> {
        let mut f = Self::from_file_pread(file, name)?;
        f.map = mapped::Mapping::new(&f.file, f.size);
        Ok(f)
    }

    /// Opens `path` read-only, always reading with `pread` (no memory mapping).
    pub fn open_pread(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(&name, "open", e))?;
        Self::from_file_pread(file, name)
    }

    /// Wraps an open file, always reading with `pread` (no memory mapping).
    pub fn from_file_pread(file: File, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let size = file.metadata().map_err(|e| Error::io(&name, "stat", e))?.len();
        Ok(LocalFile { file, name, size, map: None })
    }

    /// True if reads are served from a memory mapping (that has not failed).
    pub fn is_mapped(&self) -> bool {
        self.map.as_ref().is_some_and(|m| !m.poisoned())
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
        if let Some(m) = &self.map {
            if m.read(&mut buf[..len], offset) {
                return Ok(len);
            }
            // The mapping could not be read (file truncated, I/O error): `pread` says what is
            // wrong, or reads the bytes if the failure was transient.
        }
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
    fn invalidate(&self, offset: u64, len: u64) -> bool {
        self.inner.invalidate(self.offset + offset, len)
    }
    fn read_meta_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return self.read_exact_at(buf, offset, what); // (short: says so)
        }
        self.inner.read_meta_at(buf, self.offset + offset, what)
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

pub mod mapped {
    //! Read-only memory mappings of local files that survive the file being truncated.
    //!
    //! Reading a page of a shared file mapping past the file's end (after the file was truncated
    //! by someone else) or a page the kernel cannot read raises `SIGBUS`, which would kill the
    //! whole process, and with it every device it serves. So every mapping is registered in a
    //! lock-free table, and a `SIGBUS` handler (installed once, chaining to the previous handler
    //! for any address that is not ours) maps a zero page over the faulting page of a registered
    //! mapping and marks the mapping poisoned; the faulting copy then completes (reading zeros),
    //! [`Mapping::read`] sees the mark and reports failure, and the caller reads with `pread`
    //! instead, which returns what the file really holds or the error. A poisoned mapping is never
    //! read again.
    //!
    //! Bytes are only ever copied out of a mapping with a raw pointer copy: no Rust reference to
    //! mapped memory is made, so another process changing the file (which the format forbids,
    //! and which ZFile block CRCs detect) can only yield different bytes, never undefined
    //! behaviour in Rust code that holds a `&[u8]`.

    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use nix::libc;

    /// Mappings that can exist at once; further files are read with `pread`.
    const SLOTS: usize = 4096;

    /// Registered mappings: `[START, END)`, with `START == 0` for a free slot.
    static START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static END: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    /// Set by the signal handler when a page of the mapping faulted.
    static POISON: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
    /// Slot ownership.
    static USED: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
    static PAGE: AtomicUsize = AtomicUsize::new(4096);
    /// The `SIGBUS` action before ours (`None` if installing ours failed).
    static PREV: OnceLock<Option<libc::sigaction>> = OnceLock::new();

    /// Only async-signal-safe work: atomics, `mmap`, `sigaction`, and the previous handler.
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO, and
        // SIGBUS carries a fault address.
        let addr = unsafe { (*info).si_addr() } as usize;
        for i in 0..SLOTS {
            let start = START[i].load(Ordering::Acquire);
            if start != 0 && addr >= start && addr < END[i].load(Ordering::Acquire) {
                POISON[i].store(true, Ordering::SeqCst);
                let page = addr & !(PAGE.load(Ordering::Relaxed) - 1);
                // SAFETY: replaces one page inside a registered mapping, which its owner keeps
                // mapped while it reads from it (the owner unregisters before unmapping); the
                // owner never reads from it again once poisoned, and unmaps the whole range.
                let p = unsafe {
                    libc::mmap(
                        page as *mut libc::c_void,
                        PAGE.load(Ordering::Relaxed),
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    return; // the faulting access is retried and reads zeros
                }
                break;
            }
        }
        // Not ours (or we could not help): what would have happened without us.
        match PREV.get().copied().flatten() {
            Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: with SA_SIGINFO the previous action is a three-argument handler.
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        unsafe { std::mem::transmute(prev.sa_sigaction) };
                    f(sig, info, ctx);
                } else {
                    // SAFETY: without SA_SIGINFO the previous action is a one-argument handler.
                    let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
                    f(sig);
                }
            }
            _ => {
                // Default action: restore it and return; the access faults again and the
                // process dies as it would have.
                // SAFETY: a zeroed sigaction with SIG_DFL is a valid action.
                unsafe {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
                }
            }
        }
    }

    /// Installs the handler once; false if it could not be.
    fn install() -> bool {
        PREV.get_or_init(|| {
            // SAFETY: plain libc calls on zero-initialised (valid) sigaction structs; the handler
            // only does async-signal-safe work (see `on_sigbus`).
            unsafe {
                let page = libc::sysconf(libc::_SC_PAGESIZE);
                if page > 0 {
                    PAGE.store(page as usize, Ordering::Relaxed);
                }
                let mut prev: libc::sigaction = std::mem::zeroed();
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_sigbus as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut act.sa_mask);
                if libc::sigaction(libc::SIGBUS, &act, &mut prev) != 0 {
                    return None;
                }
                Some(prev)
            }
        })
        .is_some()
    }

    /// A registered read-only shared mapping of a whole file.
    #[derive(Debug)]
    pub struct Mapping {
        ptr: *const u8,
        len: usize,
        slot: usize,
    }

    // SAFETY: the mapping is read-only and only ever copied from (see the module documentation);
    // it may be used and unmapped from any thread.
    unsafe impl Send for Mapping {}
    // SAFETY: as above; concurrent copies out of read-only memory are fine.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// Maps the first `len` bytes of `file`; `None` if it cannot be done safely (empty file,
        /// no `mmap` support, table full, handler not installed).
        pub fn new(file: &File, len: u64) -> Option<Self> {
            let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
            if !install() {
                return None;
            }
            let slot = (0..SLOTS)
                .find(|&i| USED[i].compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok())?;
            // SAFETY: a fresh read-only shared mapping chosen by the kernel; nothing else is
            // affected.
            let p = unsafe {
                libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
            };
            if p == libc::MAP_FAILED {
                USED[slot].store(false, Ordering::Release);
                return None;
            }
            POISON[slot].store(false, Ordering::SeqCst);
            END[slot].store(p as usize + len, Ordering::Release);
            START[slot].store(p as usize, Ordering::Release);
            Some(Mapping { ptr: p as *const u8, len, slot })
        }

        /// True once a page of the mapping has faulted.
        pub fn poisoned(&self) -> bool {
            POISON[self.slot].load(Ordering::SeqCst)
        }

        /// Copies `buf.len()` bytes at `offset` (which must lie within the mapping) into `buf`;
        /// false (and `buf` unspecified) if the mapping is or became poisoned.
        #[inline]
        pub fn read(&self, buf: &mut [u8], offset: u64) -> bool {
            let end = offset.checked_add(buf.len() as u64);
            if end.is_none_or(|e| e > self.len as u64) || self.poisoned() {
                return false;
            }
            // SAFETY: `offset..offset + buf.len()` is inside the mapping (checked above), which
            // stays mapped while `self` lives; `buf` is our own memory, so they cannot overlap.
            // A page that faults is replaced with zeros by the SIGBUS handler, which marks the
            // mapping poisoned, checked below. No reference to mapped memory is created.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset as usize), buf.as_mut_ptr(), buf.len()) };
            // The handler runs on this thread during the copy (a signal the compiler cannot see)
            // or on another thread that grafted a zero page we may have read: order the check
            // after the copy.
            compiler_fence(Ordering::SeqCst);
            fence(Ordering::SeqCst);
            !self.poisoned()
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            START[self.slot].store(0, Ordering::Release);
            END[self.slot].store(0, Ordering::Release);
            // SAFETY: unmaps exactly the range mapped in `new` (including any zero pages grafted
            // over it); no copy from it is in progress since we own it mutably.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
            USED[self.slot].store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(data: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, data).unwrap();
        (dir, path)
    }

    #[test]
    fn mapped_and_pread_read_the_same() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (_d, path) = temp_file(&data);
        let m = LocalFile::open(&path).unwrap();
        let p = LocalFile::open_pread(&path).unwrap();
        assert!(m.is_mapped());
        assert!(!p.is_mapped());
        for (off, len) in [(0u64, 10usize), (4095, 2), (99_990, 100), (100_000, 5), (200_000, 5), (5, 0)] {
            let (mut a, mut b) = (vec![7u8; len], vec![7u8; len]);
            let (na, nb) = (m.read_at(&mut a, off).unwrap(), p.read_at(&mut b, off).unwrap());
            assert_eq!((na, &a), (nb, &b), "at {off}");
        }
        let empty = temp_file(b"");
        let e = LocalFile::open(&empty.1).unwrap();
        assert!(!e.is_mapped());
        assert_eq!(e.read_at(&mut [0u8; 4], 0).unwrap(), 0);
    }

    #[test]
    fn truncation_under_a_mapping_is_an_error_not_a_crash() {
        let data = vec![0xA5u8; 1 << 20];
        let (_d, path) = temp_file(&data);
        let f = LocalFile::open(&path).unwrap();
        assert!(f.is_mapped());
        let mut buf = vec![0u8; 8192];
        f.read_exact_at(&mut buf, 4096, "test").unwrap();
        assert!(buf.iter().all(|&b| b == 0xA5));
        // Someone truncates the immutable file.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
        let err = f.read_exact_at(&mut buf, 512 << 10, "the test range").unwrap_err();
        assert!(matches!(err, Error::Truncated { offset: 524288, .. }), "{err}");
        assert!(!f.is_mapped(), "a faulted mapping is not used again");
        // What is left still reads, with pread.
        f.read_exact_at(&mut buf[..4096], 0, "test").unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0xA5));
        // Other mappings are unaffected.
        let (_d2, p2) = temp_file(&data);
        let g = LocalFile::open(&p2).unwrap();
        assert!(g.is_mapped());
        g.read_exact_at(&mut buf, 512 << 10, "test").unwrap();
        assert!(g.is_mapped());
    }
}
