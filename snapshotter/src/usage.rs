//! Disk usage of a snapshot's directories, counted as containerd does: the blocks of each
//! unique inode once, and the number of unique inodes.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes and inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes of allocated blocks.
    pub size: i64,
    /// Unique inodes.
    pub inodes: i64,
}

/// The usage of the tree at `root`, skipping directories named in `skip` and never crossing
/// into another file system.
pub fn disk_usage(root: &Path, skip: &[&str]) -> DiskUsage {
    let mut seen = HashSet::new();
    let mut u = DiskUsage::default();
    let Ok(md) = std::fs::symlink_metadata(root) else { return u };
    let dev = md.dev();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        if md.dev() != dev {
            continue;
        }
        if seen.insert((md.dev(), md.ino())) {
            u.size += (md.blocks() * 512) as i64;
            u.inodes += 1;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if md.is_dir() && skip.iter().any(|s| e.file_name() == **s) {
                    continue;
                }
                stack.push(e.path());
            }
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        std::fs::create_dir(d.path().join("mountpoint")).unwrap();
        std::fs::write(d.path().join("mountpoint").join("c"), vec![1u8; 100_000]).unwrap();
        let u = disk_usage(d.path(), &["mountpoint"]);
        assert_eq!(u.inodes, 2, "the dir and one file");
        assert!(u.size >= 100_000 && u.size < 200_000, "{u:?}");
        assert_eq!(disk_usage(d.path(), &[]).inodes, 4);
    }
}
