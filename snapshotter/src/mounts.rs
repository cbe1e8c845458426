//! Kernel mounts: what `/proc/self/mountinfo` says, mounting a device's file system and
//! unmounting it, and the mount specs handed back to containerd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_snapshots::api::types::Mount;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub target: PathBuf,
    /// File system type.
    pub fstype: String,
    /// The source (device).
    pub source: String,
    /// Super-block options (overlay's lowerdir etc.).
    pub super_opts: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.splitn(3, ' ').collect();
        if pre.len() < 5 || post.len() < 2 {
            continue;
        }
        out.push(MountEntry {
            target: PathBuf::from(unescape(pre[4])),
            fstype: post[0].to_string(),
            source: unescape(post[1]),
            super_opts: post.get(2).map(|s| unescape(s)).unwrap_or_default(),
        });
    }
    out
}

/// The mounts of this process's namespace.
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

/// Whether something is mounted at `target`.
pub fn is_mounted(target: &Path) -> bool {
    mounts().iter().any(|m| m.target == target)
}

/// Whether an overlay mount uses `dir` as a layer (so its device must stay).
pub fn overlay_uses(dir: &Path) -> bool {
    let d = dir.display().to_string();
    mounts().iter().any(|m| {
        m.fstype == "overlay"
            && m.super_opts.split(',').any(|o| {
                o.split_once('=').is_some_and(|(k, v)| {
                    matches!(k, "lowerdir" | "upperdir" | "workdir") && v.split(':').any(|p| p == d)
                })
            })
    })
}

/// Mounts the file system on `device` at `target`; retried briefly, as a new device may need
/// a moment before its partition scan settles.
pub fn mount_device(device: &Path, target: &Path, fstype: &str, data: &str, read_only: bool) -> Result<()> {
    let flags = if read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    let data = if data.is_empty() { None } else { Some(data) };
    let mut last = None;
    for _ in 0..50 {
        match nix::mount::mount(Some(device), target, Some(fstype), flags, data) {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = Some(e);
                if !matches!(e, nix::errno::Errno::EBUSY | nix::errno::Errno::EAGAIN | nix::errno::Errno::ENXIO) {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(Error::Device(format!(
        "mount {} ({fstype}{}{}) on {}: {}",
        device.display(),
        if read_only { ", ro" } else { "" },
        data.map(|d| format!(", {d}")).unwrap_or_default(),
        target.display(),
        last.map_or_else(|| "failed".to_string(), |e| e.desc().to_string())
    )))
}

/// Unmounts everything stacked at `target`.
pub fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..64 {
        if !is_mounted(target) {
            return Ok(());
        }
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                return Err(Error::FailedPrecondition(format!(
                    "{} is busy: a process or mount still uses it",
                    target.display()
                )))
            }
            Err(e) => return Err(Error::Device(format!("unmount {}: {}", target.display(), e.desc()))),
        }
    }
    Err(Error::Device(format!("{} stays mounted after 64 unmounts", target.display())))
}

/// Detaches whatever is mounted at `target` lazily (`MNT_DETACH`), layer by layer: for mounts
/// whose device is dead or still busy. Failures are ignored; the caller checks what stays.
pub fn unmount_lazily(target: &Path) {
    for _ in 0..16 {
        if !is_mounted(target) || nix::mount::umount2(target, MntFlags::MNT_DETACH).is_err() {
            return;
        }
    }
}

/// A bind mount of `dir`.
pub fn bind(dir: &Path, read_only: bool) -> Mount {
    Mount {
        r#type: "bind".into(),
        source: dir.display().to_string(),
        target: String::new(),
        options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
    }
}

/// An overlay mount: `upper`/`work` for an active snapshot, `lowers` nearest first.
pub fn overlay(index_off: bool, upper_work: Option<(&Path, &Path)>, lowers: &[PathBuf]) -> Mount {
    let mut options = Vec::new();
    if index_off {
        options.push("index=off".to_string());
    }
    if let Some((upper, work)) = upper_work {
        options.push(format!("workdir={}", work.display()));
        options.push(format!("upperdir={}", upper.display()));
    }
    let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    options.push(format!("lowerdir={}", l.join(":")));
    Mount { r#type: "overlay".into(), source: "overlay".into(), target: String::new(), options }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 35 0:50 / /run/x rw - overlay overlay rw,lowerdir=/s/2/block/mountpoint:/s/1/fs,upperdir=/s/3/fs,workdir=/s/3/work\n\
                 garbage\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, PathBuf::from("/mnt/a b"));
        assert_eq!((m[0].fstype.as_str(), m[0].source.as_str()), ("ext3", "/dev/root"));
        assert!(m[1].super_opts.contains("lowerdir=/s/2/block/mountpoint"));
    }

    #[test]
    fn overlay_spec() {
        let m = overlay(true, Some((Path::new("/u"), Path::new("/w"))), &[PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(m.options, vec!["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"]);
        assert_eq!(bind(Path::new("/x"), true).options, vec!["ro", "rbind"]);
    }
}
