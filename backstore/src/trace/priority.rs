//! Priority lists: absolute file paths, one per line. Each is resolved in the ext4 of the
//! lower layers (opened read-only) to its data blocks, and the blocks through the merged lower
//! index to layer ranges, prefetched in the order of the list. Paths not in the image are
//! logged and skipped. The list is read and checked when the device opens; the paths are
//! resolved on the prefetch's own thread.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ext2fs::Filesystem;

use super::file::Record;
use super::plan::coalesce;
use super::prefetch::Plan;
use crate::io::ReadAt;
use crate::lsmt::index::Piece;
use crate::lsmt::SortedIndex;
use crate::stack::Stack;
use crate::{BlockDevice, Error, Result, SECTOR};

/// The lowers of a stack as a read-only disk (what the image's file system was written on).
pub struct LowersDisk {
    sources: Vec<Arc<dyn ReadAt>>,
    merged: SortedIndex,
    size: u64,
}

impl LowersDisk {
    /// The lowers of `stack` (sharing their sources).
    pub fn of(stack: &Stack) -> Self {
        LowersDisk {
            sources: stack.lowers().iter().map(|l| l.source().clone()).collect(),
            merged: stack.merged_index().clone(),
            size: stack.size(),
        }
    }

    fn read_sectors(&self, buf: &mut [u8], start: u64) -> Result<()> {
        let end = start + buf.len() as u64 / SECTOR;
        self.merged.for_each_piece(start, end, |p| {
            let (s, e, seg) = match p {
                Piece::Mapped(s) => (s.offset, s.end(), (!s.zeroed).then_some(s)),
                Piece::Hole { start, end } => (start, end, None),
            };
            let out = &mut buf[((s - start) * SECTOR) as usize..((e - start) * SECTOR) as usize];
            match seg {
                Some(seg) => {
                    let n = self.sources[seg.tag as usize].read_at(out, seg.moffset * SECTOR)?;
                    out[n..].fill(0);
                }
                None => out.fill(0),
            }
            Ok::<_, Error>(())
        })
    }
}

impl ext2fs::Disk for LowersDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let (a, b) = (offset / SECTOR * SECTOR, (offset + buf.len() as u64).div_ceil(SECTOR) * SECTOR);
        if a == offset && b == offset + buf.len() as u64 {
            return self.read_sectors(buf, a / SECTOR).map_err(Into::into);
        }
        let mut tmp = vec![0u8; (b - a) as usize];
        self.read_sectors(&mut tmp, a / SECTOR)?;
        buf.copy_from_slice(&tmp[(offset - a) as usize..(offset - a) as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(30)) // EROFS
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The paths of a priority list, or why the text is not one.
pub fn parse_list(text: &[u8]) -> std::result::Result<Vec<String>, String> {
    let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8 text (byte {})", e.valid_up_to()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let p = line.trim();
        if p.is_empty() {
            continue;
        }
        if !p.starts_with('/') || p.contains('\0') {
            return Err(format!("line {} is not an absolute path", i + 1));
        }
        out.push(p.to_string());
    }
    if out.is_empty() {
        return Err("no paths".into());
    }
    Ok(out)
}

/// The ranges of the lowers holding `paths`' data, in list order (stops early if `cancel`
/// is set).
pub fn resolve(lowers: LowersDisk, paths: &[String], cancel: &AtomicBool) -> Result<Vec<Record>> {
    let merged = lowers.merged.clone();
    let fs = Filesystem::open_read_only(Arc::new(lowers))
        .map_err(|e| Error::InvalidArgument(format!("cannot open the image's ext4 to resolve paths: {e}")))?;
    let bs = fs.block_size() as u64;
    let mut records = Vec::new();
    for p in paths {
        if cancel.load(Ordering::Acquire) {
            break;
        }
        let extents = match fs.namei(p).and_then(|ino| ino.map(|i| fs.data_extents(i)).transpose()) {
            Ok(Some(x)) => x,
            Ok(None) => {
                tracing::warn!(path = %p, "priority list: not in the image, skipped");
                continue;
            }
            Err(e) => {
                tracing::warn!(path = %p, error = %e, "priority list: cannot resolve, skipped");
                continue;
            }
        };
        for e in extents {
            let (s, end) = (e.physical * bs / SECTOR, (e.physical + e.count) * bs / SECTOR);
            let _ = merged.for_each_piece(s, end, |piece| {
                if let Piece::Mapped(seg) = piece {
                    if !seg.zeroed {
                        records.push(Record::read(seg.tag as u32, seg.moffset * SECTOR, seg.length as u64 * SECTOR));
                    }
                }
                Ok::<_, ()>(())
            });
        }
    }
    Ok(records)
}

/// Reads and checks the priority list at `path`; the plan that resolves it on `stack`.
pub fn plan_list(path: &Path, stack: &Stack) -> Result<Plan> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| Error::io(&shown, "read the priority list", e))?;
    let paths = parse_list(&text).map_err(|why| {
        Error::InvalidArgument(format!("not a trace (no trace magic) and not a priority list: {why}"))
    })?;
    let lowers = LowersDisk::of(stack);
    Ok(Box::new(move |cancel: &AtomicBool| {
        let records = resolve(lowers, &paths, cancel)?;
        Ok((coalesce(&records), records.len()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_absolute_paths_one_a_line() {
        assert_eq!(parse_list(b"/bin/sh\n\n  /etc/passwd \n").unwrap(), vec!["/bin/sh", "/etc/passwd"]);
        assert_eq!(parse_list(b"/bin/sh\nrelative\n").unwrap_err(), "line 2 is not an absolute path");
        assert!(parse_list(b"\x20\x18\xef\xc2\xff\xfe").unwrap_err().contains("UTF-8"));
        assert_eq!(parse_list(b"\n \n").unwrap_err(), "no paths");
    }
}
