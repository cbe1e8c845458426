//! The file-system type string of a layer (`blob-fs-type`, `defaultFsType`):
//! `fstype[;mountopts[;mkfsopts]]` with the reference's defaults (`snapshotter.md` §8.4).

/// A parsed fs-type string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsType {
    /// `ext4`, `xfs`, `erofs`, ...
    pub fs: String,
    /// Mount data options.
    pub mount_opts: String,
    /// Extra mkfs arguments.
    pub mkfs_args: Vec<String>,
}

fn default_mount(fs: &str) -> &'static str {
    match fs {
        "ext4" => "discard",
        "xfs" => "nouuid,discard",
        _ => "",
    }
}

fn default_mkfs(fs: &str) -> Vec<String> {
    let v: &[&str] = match fs {
        "ext4" => &["-O", "^has_journal,sparse_super,flex_bg", "-G", "1", "-E", "discard", "-F"],
        "xfs" => &["-f", "-l", "size=4m", "-m", "crc=0"],
        "f2fs" => &["-S", "-w", "4096"],
        "ntfs" => &["-F", "-f"],
        _ => &[],
    };
    v.iter().map(|s| s.to_string()).collect()
}

impl FsType {
    /// Parses `s` by the reference's table.
    pub fn parse(s: &str) -> FsType {
        let mut parts = s.splitn(3, ';');
        let fs = parts.next().unwrap_or_default().trim().to_string();
        let fs = if fs.is_empty() { "ext4".to_string() } else { fs };
        match (parts.next(), parts.next()) {
            (None, _) => FsType { mount_opts: default_mount(&fs).into(), mkfs_args: default_mkfs(&fs), fs },
            (Some(m), None) => FsType { mount_opts: m.into(), mkfs_args: default_mkfs(&fs), fs },
            (Some(m), Some(k)) => FsType {
                mount_opts: m.into(),
                mkfs_args: k.split(' ').filter(|a| !a.is_empty()).map(str::to_string).collect(),
                fs,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_table() {
        let e = FsType::parse("ext4");
        assert_eq!(e.mount_opts, "discard");
        assert_eq!(e.mkfs_args.join(" "), "-O ^has_journal,sparse_super,flex_bg -G 1 -E discard -F");
        assert_eq!(FsType::parse("xfs").mount_opts, "nouuid,discard");
        assert_eq!(FsType::parse("f2fs").mkfs_args.join(" "), "-S -w 4096");
        assert_eq!(FsType::parse("erofs").mkfs_args, Vec::<String>::new());
        let t = FsType::parse("ext4;");
        assert_eq!((t.mount_opts.as_str(), t.mkfs_args.len()), ("", 7));
        let t = FsType::parse("ext4;;");
        assert_eq!((t.mount_opts.as_str(), t.mkfs_args.len()), ("", 0));
        assert_eq!(FsType::parse("ext4;;a b").mkfs_args, vec!["a", "b"]);
        let t = FsType::parse("xfs;m1,m2");
        assert_eq!((t.mount_opts.as_str(), t.mkfs_args.len()), ("m1,m2", 5));
        let t = FsType::parse("xfs;m1,m2;");
        assert_eq!((t.mount_opts.as_str(), t.mkfs_args.len()), ("m1,m2", 0));
    }
}
