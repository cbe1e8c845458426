//! A libext2fs I/O manager whose channels read and write a Rust [`Disk`].
//!
//! libext2fs opens a filesystem by name through an I/O manager. Ours looks the name up in a
//! registry filled just before the open ([`register`]) and keeps the disk in the channel's
//! private data. Writes go straight to the disk: the layer stack below is the cache.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_ulong, c_ulonglong, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::cache::BlockCache;
use crate::disk::Disk;
use crate::sys;

type Errcode = sys::errcode_t;

/// Disks waiting to be opened, by channel name.
fn registry() -> &'static Mutex<HashMap<String, Arc<dyn Disk>>> {
    static R: OnceLock<Mutex<HashMap<String, Arc<dyn Disk>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A name under which libext2fs can open `disk` through [`manager`]; [`Registration`] removes
/// it again when dropped.
pub struct Registration {
    /// The name to pass to `ext2fs_open2` / `ext2fs_initialize`.
    pub name: CString,
}

/// Registers `disk` for one open.
pub fn register(disk: Arc<dyn Disk>) -> Registration {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!("rust-disk:{}", NEXT.fetch_add(1, Ordering::Relaxed));
    if let Ok(mut r) = registry().lock() {
        r.insert(name.clone(), disk);
    }
    Registration { name: CString::new(name).unwrap_or_default() }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut r) = registry().lock() {
            r.remove(self.name.to_str().unwrap_or_default());
        }
    }
}

/// The manager to pass to libext2fs.
pub fn manager() -> sys::io_manager {
    struct Manager(sys::struct_io_manager);
    // SAFETY: the table is immutable after initialisation and only holds function pointers and
    // a pointer to a static string.
    unsafe impl Sync for Manager {}
    // SAFETY: as above.
    unsafe impl Send for Manager {}
    static M: OnceLock<Manager> = OnceLock::new();
    let m = M.get_or_init(|| {
        Manager(sys::struct_io_manager {
            magic: sys::EXT2_ET_MAGIC_IO_MANAGER as Errcode,
            name: c"Rust disk I/O manager".as_ptr(),
            open: Some(open),
            close: Some(close),
            set_blksize: Some(set_blksize),
            read_blk: Some(read_blk),
            write_blk: Some(write_blk),
            flush: Some(flush),
            write_byte: Some(write_byte),
            set_option: Some(set_option),
            get_stats: Some(get_stats),
            read_blk64: Some(read_blk64),
            write_blk64: Some(write_blk64),
            discard: Some(discard),
            cache_readahead: Some(cache_readahead),
            zeroout: Some(zeroout),
            reserved: [0; 14],
        })
    });
    &m.0 as *const sys::struct_io_manager as sys::io_manager
}

/// Bytes of small block I/O a channel caches.
const CACHE_BYTES: usize = 64 << 20;

/// What a channel keeps.
struct Channel {
    disk: Arc<dyn Disk>,
    cache: Mutex<BlockCache>,
    _name: CString,
}

impl Channel {
    fn cache(&self) -> std::sync::MutexGuard<'_, BlockCache> {
        // A panic while holding the lock cannot leave the cache half-updated in a way that
        // matters more than the panic itself: take it back.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The errno of an I/O error, as libext2fs error codes include errnos.
fn errcode(e: &std::io::Error, fallback: u32) -> Errcode {
    e.raw_os_error().map_or(fallback as Errcode, |n| n as Errcode)
}

/// # Safety
/// `ch` must be a channel made by [`open`].
unsafe fn chan<'a>(ch: sys::io_channel) -> &'a Channel {
    // SAFETY: `open` stores a leaked `Box<Channel>` in private_data, freed only by `close`.
    unsafe { &*((*ch).private_data as *const Channel) }
}

/// Byte range of `count` blocks at `block` (a negative count is a byte count).
///
/// # Safety
/// `ch` must be a valid channel.
unsafe fn range(ch: sys::io_channel, block: u64, count: c_int) -> Option<(u64, usize)> {
    // SAFETY: valid channel (caller).
    let bs = unsafe { (*ch).block_size } as u64;
    let len = if count < 0 { (-(count as i64)) as u64 } else { count as u64 * bs };
    Some((block.checked_mul(bs)?, usize::try_from(len).ok()?))
}

unsafe extern "C" fn open(name: *const c_char, _flags: c_int, out: *mut sys::io_channel) -> Errcode {
    if name.is_null() || out.is_null() {
        return sys::EXT2_ET_BAD_DEVICE_NAME as Errcode;
    }
    // SAFETY: libext2fs passes the NUL-terminated name it was given.
    let cname = unsafe { CStr::from_ptr(name) }.to_owned();
    let disk = match registry().lock().ok().and_then(|r| r.get(cname.to_str().unwrap_or_default()).cloned()) {
        Some(d) => d,
        None => return sys::EXT2_ET_BAD_DEVICE_NAME as Errcode,
    };
    let data = Box::new(Channel { disk, cache: Mutex::new(BlockCache::new(1024, CACHE_BYTES)), _name: cname });
    let channel = Box::new(sys::struct_io_channel {
        magic: sys::EXT2_ET_MAGIC_IO_CHANNEL as Errcode,
        manager: manager(),
        name: data._name.as_ptr() as *mut c_char,
        block_size: 1024,
        refcount: 1,
        flags: sys::CHANNEL_FLAGS_DISCARD_ZEROES as c_int,
        private_data: Box::into_raw(data) as *mut c_void,
        ..Default::default()
    });
    // SAFETY: `out` is non-null (checked) and points to libext2fs's channel slot.
    unsafe { *out = Box::into_raw(channel) };
    0
}

unsafe extern "C" fn close(ch: sys::io_channel) -> Errcode {
    // SAFETY: libext2fs closes only channels we opened.
    unsafe {
        (*ch).refcount -= 1;
        if (*ch).refcount > 0 {
            return 0;
        }
        let data = Box::from_raw((*ch).private_data as *mut Channel);
        let flushed = data.cache().flush(data.disk.as_ref()).and_then(|()| data.disk.flush());
        let r = flushed.map_or_else(|e| errcode(&e, sys::EXT2_ET_SHORT_WRITE), |()| 0);
        drop(data);
        drop(Box::from_raw(ch));
        r
    }
}

unsafe extern "C" fn set_blksize(ch: sys::io_channel, blksize: c_int) -> Errcode {
    if blksize <= 0 {
        return sys::EXT2_ET_INVALID_ARGUMENT as Errcode;
    }
    // SAFETY: a channel we opened.
    unsafe {
        let c = chan(ch);
        if let Err(e) = c.cache().reset(c.disk.as_ref(), blksize as usize) {
            return errcode(&e, sys::EXT2_ET_SHORT_WRITE);
        }
        (*ch).block_size = blksize;
    }
    0
}

unsafe extern "C" fn read_blk64(ch: sys::io_channel, block: c_ulonglong, count: c_int, data: *mut c_void) -> Errcode {
    // SAFETY: a channel we opened; libext2fs passes a buffer of the requested size.
    unsafe {
        let Some((off, len)) = range(ch, block, count) else { return sys::EXT2_ET_SHORT_READ as Errcode };
        let buf = std::slice::from_raw_parts_mut(data as *mut u8, len);
        let c = chan(ch);
        let mut cache = c.cache();
        let r = if count < 0 {
            let bs = cache.block_size();
            cache.reset(c.disk.as_ref(), bs).and_then(|()| c.disk.read_at(buf, off))
        } else {
            cache.read(c.disk.as_ref(), block, count as u64, buf)
        };
        match r {
            Ok(()) => 0,
            Err(e) => errcode(&e, sys::EXT2_ET_SHORT_READ),
        }
    }
}

unsafe extern "C" fn write_blk64(
    ch: sys::io_channel,
    block: c_ulonglong,
    count: c_int,
    data: *const c_void,
) -> Errcode {
    // SAFETY: as in read_blk64.
    unsafe {
        let Some((off, len)) = range(ch, block, count) else { return sys::EXT2_ET_SHORT_WRITE as Errcode };
        let buf = std::slice::from_raw_parts(data as *const u8, len);
        let c = chan(ch);
        let mut cache = c.cache();
        let r = if count < 0 {
            let bs = cache.block_size();
            cache.reset(c.disk.as_ref(), bs).and_then(|()| c.disk.write_at(buf, off))
        } else {
            cache.write(c.disk.as_ref(), block, count as u64, buf)
        };
        match r {
            Ok(()) => 0,
            Err(e) => errcode(&e, sys::EXT2_ET_SHORT_WRITE),
        }
    }
}

unsafe extern "C" fn read_blk(ch: sys::io_channel, block: c_ulong, count: c_int, data: *mut c_void) -> Errcode {
    // SAFETY: forwarded as is.
    unsafe { read_blk64(ch, block as c_ulonglong, count, data) }
}

unsafe extern "C" fn write_blk(ch: sys::io_channel, block: c_ulong, count: c_int, data: *const c_void) -> Errcode {
    // SAFETY: forwarded as is.
    unsafe { write_blk64(ch, block as c_ulonglong, count, data) }
}

// `c_ulong` is u64 on 64-bit Linux only: keep the casts for the others.
#[allow(clippy::unnecessary_cast)]
unsafe extern "C" fn write_byte(ch: sys::io_channel, offset: c_ulong, count: c_int, data: *const c_void) -> Errcode {
    if count < 0 {
        return sys::EXT2_ET_INVALID_ARGUMENT as Errcode;
    }
    // SAFETY: a channel we opened; `data` holds `count` bytes.
    unsafe {
        let c = chan(ch);
        let disk = &c.disk;
        {
            let mut cache = c.cache();
            let bs = cache.block_size();
            if let Err(e) = cache.reset(disk.as_ref(), bs) {
                return errcode(&e, sys::EXT2_ET_SHORT_WRITE);
            }
        }
        let src = std::slice::from_raw_parts(data as *const u8, count as usize);
        // Read-modify-write the enclosing 512-byte sectors: disks take whole sectors.
        let start = offset as u64 & !511;
        let end = (offset as u64 + count as u64 + 511) & !511;
        let mut buf = vec![0u8; (end - start) as usize];
        if let Err(e) = disk.read_at(&mut buf, start) {
            return errcode(&e, sys::EXT2_ET_SHORT_READ);
        }
        let at = (offset as u64 - start) as usize;
        buf[at..at + src.len()].copy_from_slice(src);
        match disk.write_at(&buf, start) {
            Ok(()) => 0,
            Err(e) => errcode(&e, sys::EXT2_ET_SHORT_WRITE),
        }
    }
}

unsafe extern "C" fn flush(ch: sys::io_channel) -> Errcode {
    // SAFETY: a channel we opened.
    unsafe {
        let c = chan(ch);
        let r = c.cache().flush(c.disk.as_ref()).and_then(|()| c.disk.flush());
        r.map_or_else(|e| errcode(&e, sys::EXT2_ET_SHORT_WRITE), |()| 0)
    }
}

unsafe extern "C" fn set_option(_ch: sys::io_channel, _option: *const c_char, _arg: *const c_char) -> Errcode {
    sys::EXT2_ET_INVALID_ARGUMENT as Errcode
}

unsafe extern "C" fn get_stats(_ch: sys::io_channel, stats: *mut sys::io_stats) -> Errcode {
    if !stats.is_null() {
        // SAFETY: libext2fs passes a valid out pointer; no statistics are kept.
        unsafe { *stats = std::ptr::null_mut() };
    }
    0
}

unsafe extern "C" fn zeroout(ch: sys::io_channel, block: c_ulonglong, count: c_ulonglong) -> Errcode {
    // SAFETY: a channel we opened.
    unsafe {
        let bs = (*ch).block_size as u64;
        let (Some(off), Some(len)) = (block.checked_mul(bs), count.checked_mul(bs)) else {
            return sys::EXT2_ET_INVALID_ARGUMENT as Errcode;
        };
        let c = chan(ch);
        c.cache().forget(block, count);
        c.disk.zero_range(off, len).map_or_else(|e| errcode(&e, sys::EXT2_ET_SHORT_WRITE), |()| 0)
    }
}

unsafe extern "C" fn discard(ch: sys::io_channel, block: c_ulonglong, count: c_ulonglong) -> Errcode {
    // SAFETY: forwarded as is (discarded ranges read as zeros: CHANNEL_FLAGS_DISCARD_ZEROES).
    unsafe { zeroout(ch, block, count) }
}

unsafe extern "C" fn cache_readahead(_ch: sys::io_channel, _block: c_ulonglong, _count: c_ulonglong) -> Errcode {
    0
}
