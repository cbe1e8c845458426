//! Userspace apply: unpacks an OCI layer tar straight into the ext4 of a layer stack through
//! libext2fs ([`ext2fs`]), so every block written lands in the writable upper layer with no
//! device, no kernel mount and no root.
//!
//! OCI semantics as containerd applies a layer onto a directory: `.wh.<name>` removes `<name>`
//! of lower layers, `.wh..wh..opq` empties a directory of lower-layer content, an entry replaces
//! what exists unless both are directories, missing parent directories are made, hard links
//! may point at files of lower layers, and parent paths follow symlinks inside the image.
//! Unlike containerd, an entry whose path would leave the image (absolute, `..`, or a symlink
//! climbing above the root) is refused with an error rather than clamped.
//!
//! * [`disk`]: the stack as libext2fs's disk;
//! * [`input`]: the stream (file, FIFO, stdin; gzip/zstd) and its checksum;
//! * [`paths`]: path cleaning and resolution inside the image.

pub mod disk;
pub mod input;
pub mod paths;

use std::collections::HashSet;
use std::io::Read;

use ext2fs::{Attrs, Filesystem, Ino, Kind, Time};

use self::paths::{clean, Resolver};
use crate::{Error, Result};

/// What an apply did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Tar entries read.
    pub entries: u64,
    /// Regular-file bytes written.
    pub file_bytes: u64,
    /// Whiteouts and opaque markers honoured.
    pub whiteouts: u64,
}

fn fs_err(path: &[u8], e: ext2fs::Error) -> Error {
    Error::InvalidArgument(format!("{}: {e}", String::from_utf8_lossy(path)))
}

fn tar_err(what: &str, e: std::io::Error) -> Error {
    Error::io("layer tar", what, e)
}

/// Applies the layer tar read from `input` to `fs`.
pub fn apply(fs: &mut Filesystem, input: &mut dyn Read) -> Result<Stats> {
    let mut archive = ::tar::Archive::new(input);
    let mut stats = Stats::default();
    let mut resolver = Resolver::default();
    // Paths this layer made: its own whiteouts and opaque markers do not remove them.
    let mut created: HashSet<Vec<u8>> = HashSet::new();
    for entry in archive.entries().map_err(|e| tar_err("read", e))? {
        let mut entry = entry.map_err(|e| tar_err("read an entry header", e))?;
        stats.entries += 1;
        let raw_path = entry.path_bytes().into_owned();
        let comps = clean(&raw_path)?;
        let Some((base, parent)) = comps.split_last() else { continue }; // the root itself
        let full = comps.join(&b'/');
        if let Some(hidden) = base.strip_prefix(b".wh.") {
            stats.whiteouts += 1;
            let Some(dir) = resolver.resolve_dir(fs, parent, None)? else { continue };
            if hidden == b".wh..opq" {
                let prefix = parent.join(&b'/');
                for e in fs.entries(dir).map_err(|e| fs_err(&full, e))? {
                    let child = if prefix.is_empty() { e.name.clone() } else { [&prefix[..], b"/", &e.name].concat() };
                    if !created.contains(&child) {
                        fs.remove(dir, &e.name).map_err(|e| fs_err(&child, e))?;
                        resolver.forget();
                    }
                }
            } else {
                let target = [&parent.join(&b'/')[..], if parent.is_empty() { b"" } else { b"/" }, hidden].concat();
                if !created.contains(&target) {
                    paths::check_name(hidden, &raw_path)?;
                    fs.remove(dir, hidden).map_err(|e| fs_err(&target, e))?;
                    resolver.forget();
                }
            }
            continue;
        }
        let attrs = attrs_of(&mut entry)?;
        let dir = resolver
            .resolve_dir(fs, parent, Some(&attrs))?
            .ok_or_else(|| Error::InvalidArgument(format!("{}: parent missing", String::from_utf8_lossy(&raw_path))))?;
        let header = entry.header().clone();
        let etype = header.entry_type();
        let existing = fs.lookup(dir, base).map_err(|e| fs_err(&full, e))?;
        if let Some(ino) = existing {
            let both_dirs = etype.is_dir() && fs.is_dir(ino).map_err(|e| fs_err(&full, e))?;
            if both_dirs {
                fs.set_attrs(ino, &attrs).map_err(|e| fs_err(&full, e))?;
                set_xattrs(fs, ino, &mut entry, &full)?;
                created.insert(full);
                continue;
            }
            fs.remove(dir, base).map_err(|e| fs_err(&full, e))?;
            resolver.forget();
        }
        use ::tar::EntryType as T;
        let kind = match etype {
            T::Regular | T::Continuous | T::GNUSparse => Kind::Regular,
            T::Directory => Kind::Directory,
            T::Symlink => Kind::Symlink(link_name(&entry, &raw_path)?),
            T::Char | T::Block => {
                let major = header.device_major().map_err(|e| tar_err("device major", e))?.unwrap_or(0);
                let minor = header.device_minor().map_err(|e| tar_err("device minor", e))?.unwrap_or(0);
                if etype == T::Char {
                    Kind::CharDevice(major, minor)
                } else {
                    Kind::BlockDevice(major, minor)
                }
            }
            T::Fifo => Kind::Fifo,
            T::Link => {
                let target = link_name(&entry, &raw_path)?;
                let tcomps = clean(&target)?;
                let Some((tbase, tparent)) = tcomps.split_last() else {
                    return Err(Error::InvalidArgument(format!(
                        "{}: hard link to the root",
                        String::from_utf8_lossy(&raw_path)
                    )));
                };
                let tdir = resolver.resolve_dir(fs, tparent, None)?;
                let tino = match tdir {
                    Some(d) => fs.lookup(d, tbase).map_err(|e| fs_err(&target, e))?,
                    None => None,
                };
                let tino = tino.ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{}: hard link target {} does not exist",
                        String::from_utf8_lossy(&raw_path),
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                fs.hard_link(dir, base, tino).map_err(|e| fs_err(&full, e))?;
                // The link's header applies to the shared inode, as containerd's and Docker's
                // appliers do (so a converted image shows what `ctr run` of the source shows).
                fs.set_attrs(tino, &attrs).map_err(|e| fs_err(&full, e))?;
                set_xattrs(fs, tino, &mut entry, &full)?;
                created.insert(full);
                continue;
            }
            other => {
                tracing::debug!(path = %String::from_utf8_lossy(&raw_path), kind = ?other, "entry type skipped");
                continue;
            }
        };
        let ino = fs.create(dir, base, &kind, &attrs).map_err(|e| fs_err(&full, e))?;
        if kind == Kind::Regular {
            let size = entry.size();
            fs.write_data(ino, &mut entry, size).map_err(|e| fs_err(&full, e))?;
            stats.file_bytes += size;
        }
        set_xattrs(fs, ino, &mut entry, &full)?;
        created.insert(full);
    }
    Ok(stats)
}

fn link_name<R: Read>(entry: &::tar::Entry<'_, R>, path: &[u8]) -> Result<Vec<u8>> {
    entry
        .link_name_bytes()
        .map(|c| c.into_owned())
        .ok_or_else(|| Error::InvalidArgument(format!("{}: link without a target", String::from_utf8_lossy(path))))
}

/// A PAX time ("1700000000.123456789", possibly negative).
fn pax_time(v: &str) -> Option<Time> {
    let (neg, v) = match v.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, v),
    };
    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = s.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nsecs: u32 = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    Some(if !neg {
        Time { secs, nsecs }
    } else if nsecs == 0 {
        Time { secs: -secs, nsecs: 0 }
    } else {
        Time { secs: -secs - 1, nsecs: 1_000_000_000 - nsecs }
    })
}

fn attrs_of<R: Read>(entry: &mut ::tar::Entry<'_, R>) -> Result<Attrs> {
    let h = entry.header();
    let perm = (h.mode().map_err(|e| tar_err("mode", e))? & 0o7777) as u16;
    let mut uid = h.uid().map_err(|e| tar_err("uid", e))?;
    let mut gid = h.gid().map_err(|e| tar_err("gid", e))?;
    let mut mtime = Time { secs: h.mtime().map_err(|e| tar_err("mtime", e))? as i64, nsecs: 0 };
    let mut atime = None;
    if let Some(pax) = entry.pax_extensions().map_err(|e| tar_err("PAX header", e))? {
        for ext in pax {
            let ext = ext.map_err(|e| tar_err("PAX record", e))?;
            let (Ok(k), Ok(v)) = (ext.key(), ext.value()) else { continue };
            match k {
                "uid" => uid = v.parse().unwrap_or(uid),
                "gid" => gid = v.parse().unwrap_or(gid),
                "mtime" => mtime = pax_time(v).unwrap_or(mtime),
                "atime" => atime = pax_time(v),
                _ => {}
            }
        }
    }
    let id = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} does not fit in 32 bits")))
    };
    Ok(Attrs { perm, uid: id(uid, "uid")?, gid: id(gid, "gid")?, mtime, atime: atime.unwrap_or(mtime) })
}

fn set_xattrs<R: Read>(fs: &mut Filesystem, ino: Ino, entry: &mut ::tar::Entry<'_, R>, path: &[u8]) -> Result<()> {
    let Some(pax) = entry.pax_extensions().map_err(|e| tar_err("PAX header", e))? else { return Ok(()) };
    for ext in pax {
        let ext = ext.map_err(|e| tar_err("PAX record", e))?;
        let Ok(k) = ext.key() else { continue };
        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
            fs.set_xattr(ino, name, ext.value_bytes()).map_err(|e| fs_err(path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(pax_time("1700000000.5"), Some(Time { secs: 1_700_000_000, nsecs: 500_000_000 }));
        assert_eq!(pax_time("-1.25"), Some(Time { secs: -2, nsecs: 750_000_000 }));
        assert_eq!(pax_time("-86400"), Some(Time { secs: -86400, nsecs: 0 }));
        assert_eq!(pax_time("5000000000"), Some(Time { secs: 5_000_000_000, nsecs: 0 }));
        assert_eq!(pax_time("x"), None);
    }
}
