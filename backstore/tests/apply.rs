//! Userspace apply (`overlaybd-apply`) against the kernel: layers built here with every edge
//! case OCI has, applied in user space and committed, then attached (fuse-loop) and mounted
//! by the kernel, must list exactly what `tar -x` of the same layers gives on a kernel ext4
//! with OCI whiteout handling. Also: the reference's own layer, unprivileged runs,
//! reproducibility and bad input.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::kernel::*;
use common::*;

// ---------------------------------------------------------------------------------------------
// Building layers

/// Metadata of an entry.
#[derive(Clone)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    /// PAX mtime, e.g. "1700000000.123456789" or "-1000000".
    mtime: String,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn meta(mode: u32) -> Meta {
    Meta { mode, uid: 0, gid: 0, mtime: "1600000000".into(), xattrs: Vec::new() }
}

enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    Hard(&'static str),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// A layer tar being built.
struct Layer(tar::Builder<Vec<u8>>);

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ' '=' '\n'
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn add(&mut self, path: &str, kind: Kind, m: &Meta) {
        let mut pax = Vec::new();
        pax.extend(pax_record("mtime", m.mtime.as_bytes()));
        pax.extend(pax_record("uid", m.uid.to_string().as_bytes()));
        pax.extend(pax_record("gid", m.gid.to_string().as_bytes()));
        if path.len() > 99 {
            pax.extend(pax_record("path", path.as_bytes()));
        }
        if let Kind::Symlink(t) | Kind::Hard(t) = &kind {
            if t.len() > 99 {
                pax.extend(pax_record("linkpath", t.as_bytes()));
            }
        }
        for (k, v) in &m.xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        let mut ph = tar::Header::new_ustar();
        ph.set_path("PaxHeaders/x").unwrap();
        ph.set_entry_type(tar::EntryType::XHeader);
        ph.set_size(pax.len() as u64);
        ph.set_mode(0o644);
        ph.set_cksum();
        self.0.append(&ph, &pax[..]).unwrap();

        let mut h = tar::Header::new_ustar();
        let short = if path.len() > 99 { "long-name-in-pax" } else { path };
        // Raw bytes: the tests also need names the tar crate refuses to write ("..", "/x").
        h.as_mut_bytes()[..100].fill(0);
        h.as_mut_bytes()[..short.len()].copy_from_slice(short.as_bytes());
        h.set_mode(m.mode);
        h.set_uid(m.uid.min(0o7777777));
        h.set_gid(m.gid.min(0o7777777));
        h.set_mtime(m.mtime.split('.').next().unwrap().parse::<i64>().unwrap().max(0) as u64);
        let mut data: Vec<u8> = Vec::new();
        match kind {
            Kind::Dir => h.set_entry_type(tar::EntryType::Directory),
            Kind::File(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                data = c;
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name_literal(if t.len() > 99 { "long-target-in-pax" } else { t }).unwrap();
            }
            Kind::Hard(t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name_literal(if t.len() > 99 { "long-target-in-pax" } else { t }).unwrap();
            }
            Kind::Char(a, b) | Kind::Block(a, b) => {
                h.set_entry_type(if matches!(kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(a).unwrap();
                h.set_device_minor(b).unwrap();
            }
            Kind::Fifo => h.set_entry_type(tar::EntryType::Fifo),
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, &data[..]).unwrap();
    }

    fn whiteout(&mut self, dir: &str, name: &str) {
        let p = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
        self.add(&p, Kind::File(Vec::new()), &meta(0o644));
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Three layers with the edge cases: returns their plain tars.
fn edge_case_layers() -> Vec<Vec<u8>> {
    let caps = vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut l1 = Layer::new();
    for d in ["etc", "bin", "usr", "usr/lib", "usr/lib/old", "dev", "run", "opq", "del", "del/sub", "times", "deep"] {
        l1.add(d, Kind::Dir, &meta(0o755));
    }
    l1.add("etc/passwd", Kind::File(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()), &meta(0o644));
    l1.add("etc/shadow", Kind::File(b"root:*:1::::::\n".to_vec()), &Meta { gid: 42, ..meta(0o640) });
    // The real busybox when the machine has it (the VM tests install busybox-static).
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|_| random(300_000, 1));
    l1.add("bin/busybox", Kind::File(busybox), &meta(0o755));
    l1.add("bin/sh", Kind::Hard("bin/busybox"), &meta(0o755));
    l1.add("bin/ls", Kind::Hard("bin/busybox"), &meta(0o755));
    l1.add(
        "bin/ping",
        Kind::File(random(5000, 2)),
        &Meta { xattrs: vec![("security.capability".into(), caps)], ..meta(0o4755) },
    );
    l1.add("lib", Kind::Symlink("usr/lib"), &meta(0o777));
    l1.add(
        "longlink",
        Kind::Symlink("usr/lib/a-very-long-symlink-target-that-does-not-fit-in-the-inode-and-needs-a-block-of-its-own/with/many/levels/of/directories/in/it/x"),
        &meta(0o777),
    );
    l1.add(
        "usr/lib/libx.so",
        Kind::File(random(70_000, 3)),
        &Meta { xattrs: vec![("user.test".into(), b"v1".to_vec()), ("user.big".into(), vec![7; 2000])], ..meta(0o644) },
    );
    l1.add("usr/lib/old/file", Kind::File(b"old".to_vec()), &meta(0o644));
    l1.add("dev/null", Kind::Char(1, 3), &meta(0o666));
    l1.add("dev/sda", Kind::Block(8, 0), &Meta { gid: 6, ..meta(0o660) });
    l1.add("dev/nvme", Kind::Block(259, 70000), &meta(0o660));
    l1.add("run/fifo", Kind::Fifo, &meta(0o600));
    l1.add("opq/a", Kind::File(b"a".to_vec()), &meta(0o644));
    l1.add("opq/b", Kind::File(b"b".to_vec()), &meta(0o644));
    l1.add("del/sub/x", Kind::File(b"x".to_vec()), &meta(0o644));
    l1.add("times/before-1970", Kind::File(b"t".to_vec()), &Meta { mtime: "-1000000".into(), ..meta(0o644) });
    l1.add("times/after-2038", Kind::File(b"t".to_vec()), &Meta { mtime: "5000000000".into(), ..meta(0o644) });
    l1.add(
        "times/nanoseconds",
        Kind::File(b"t".to_vec()),
        &Meta { mtime: "1700000000.123456789".into(), ..meta(0o644) },
    );
    l1.add("times/big-ids", Kind::File(b"t".to_vec()), &Meta { uid: 100_000, gid: 3_000_000, ..meta(0o600) });
    let long_name = "n".repeat(255);
    l1.add(&format!("deep/{long_name}"), Kind::File(b"long".to_vec()), &meta(0o644));
    let mut deep = String::from("deep");
    for i in 0..20 {
        deep.push_str(&format!("/level-{i:02}-directory"));
        l1.add(&deep, Kind::Dir, &meta(0o755));
    }
    l1.add(&format!("{deep}/leaf"), Kind::File(b"leaf".to_vec()), &meta(0o644));
    let mut sparse = vec![0u8; 8 << 20];
    sparse[..4096].copy_from_slice(&random(4096, 4));
    sparse[(6 << 20)..(6 << 20) + 100].copy_from_slice(&random(100, 5));
    l1.add("usr/lib/sparse.img", Kind::File(sparse), &meta(0o644));

    let mut l2 = Layer::new();
    for d in ["etc", "opq", "bin", "usr", "usr/lib", ""] {
        if !d.is_empty() {
            l2.add(d, Kind::Dir, &meta(if d == "etc" { 0o700 } else { 0o755 }));
        }
    }
    l2.whiteout("etc", "passwd");
    l2.add("etc/passwd2", Kind::File(b"new\n".to_vec()), &meta(0o644));
    l2.add("etc/shadow", Kind::Symlink("passwd2"), &meta(0o777)); // a file replaced by a symlink
    l2.add("opq/c", Kind::File(b"c".to_vec()), &meta(0o644)); // before the marker: it stays
    l2.add("opq/.wh..wh..opq", Kind::File(Vec::new()), &meta(0o644));
    l2.whiteout("", "del");
    l2.add("bin/hl", Kind::Hard("bin/busybox"), &meta(0o755)); // a hard link to a lower file
    l2.add("lib/through-symlink", Kind::File(b"via lib".to_vec()), &meta(0o644));
    l2.add("usr/lib/old", Kind::File(b"dir became a file".to_vec()), &meta(0o644));
    l2.add(
        "usr/lib/libx.so",
        Kind::File(random(1000, 6)),
        &Meta { xattrs: vec![("user.test".into(), b"v2".to_vec())], ..meta(0o755) },
    );

    let mut l3 = Layer::new();
    l3.add("big", Kind::Dir, &meta(0o755));
    // A layer of several hundred MB: random data, with zero runs that become holes.
    let mut big = random(320 << 20, 7);
    for hole in 0..8usize {
        let at = hole * (40 << 20) + (1 << 20);
        big[at..at + (8 << 20)].fill(0);
    }
    l3.add("big/file", Kind::File(big), &meta(0o644));
    l3.add("bin", Kind::Dir, &meta(0o755));
    l3.whiteout("bin", "ls");
    l3.add("bin/ls", Kind::Dir, &meta(0o755)); // the whited-out link comes back as a directory
    vec![l1.finish(), l2.finish(), l3.finish()]
}

// ---------------------------------------------------------------------------------------------
// Running the tools

fn tool(name: &str) -> Command {
    Command::new(bin(name))
}

fn out(c: &mut Command) -> Output {
    c.output().expect("run a tool")
}

/// Applies `tar` (a file) as a new layer over `lowers` in `dir`; returns the committed layer.
fn apply_layer(dir: &Path, n: usize, tar: &Path, lowers: &[PathBuf], mkfs: bool) -> PathBuf {
    let (data, index) = (dir.join(format!("data{n}")), dir.join(format!("index{n}")));
    let mut c = tool("overlaybd-create");
    c.arg("-s").arg(&data).arg(&index).arg(if mkfs { "1" } else { "0" });
    if mkfs {
        c.arg("--mkfs");
    }
    run(&mut c);
    let cfg = dir.join(format!("config{n}.json"));
    let lowers_json: Vec<String> = lowers.iter().map(|l| format!(r#"{{"file":"{}"}}"#, l.display())).collect();
    std::fs::write(
        &cfg,
        format!(
            r#"{{"lowers":[{}],"upper":{{"data":"{}","index":"{}"}}}}"#,
            lowers_json.join(","),
            data.display(),
            index.display()
        ),
    )
    .unwrap();
    run(tool("overlaybd-apply").arg(tar).arg(&cfg));
    let layer = dir.join(format!("layer{n}.tar"));
    let mut commit = tool("overlaybd-commit");
    commit.args(["-z", "-t", "--uuid", &format!("00000000-0000-0000-0000-00000000000{n}")]);
    if n > 0 && !mkfs && lowers.len() == n {
        commit.args(["--parent-uuid", &format!("00000000-0000-0000-0000-00000000000{}", n - 1)]);
    }
    run(commit.arg(&data).arg(&index).arg(&layer));
    layer
}

fn fsck_image(dir: &Path, layers: &[PathBuf]) {
    let img = dir.join("fsck.img");
    let _ = std::fs::remove_file(&img);
    run(tool("overlaybd-dump").args(layers).arg("-o").arg(&img));
    let o = out(Command::new("e2fsck").arg("-fn").arg(&img));
    assert!(o.status.success(), "e2fsck finds problems: {}", String::from_utf8_lossy(&o.stdout));
    std::fs::remove_file(&img).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Comparing trees

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    nlink: u64,
    size: u64,
    content: String,
    rdev: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: a NUL-terminated path and a buffer with its length.
    let n = unsafe { nix::libc::llistxattr(c.as_ptr(), names.as_mut_ptr() as *mut _, names.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    let mut out = Vec::new();
    for name in names[..n as usize].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let m = unsafe { nix::libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr() as *mut _, v.len()) };
        assert!(m >= 0, "lgetxattr {}", p.display());
        v.truncate(m as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), v));
    }
    out.sort();
    out
}

/// Every file under `root` (but the root itself and lost+found), with hard-link groups.
fn manifest(root: &Path) -> (BTreeMap<String, Node>, Vec<Vec<String>>) {
    let mut files = BTreeMap::new();
    let mut links: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, content) = if ft.is_dir() {
                todo.push(p.clone());
                ("dir", String::new())
            } else if ft.is_file() {
                ("file", sha256_file(&p))
            } else if ft.is_symlink() {
                ("symlink", std::fs::read_link(&p).unwrap().to_string_lossy().into_owned())
            } else if ft.is_char_device() {
                ("char", String::new())
            } else if ft.is_block_device() {
                ("block", String::new())
            } else if ft.is_fifo() {
                ("fifo", String::new())
            } else {
                ("other", String::new())
            };
            if !ft.is_dir() && m.nlink() > 1 {
                links.entry(m.ino()).or_default().push(rel.clone());
            }
            files.insert(
                rel,
                Node {
                    kind,
                    mode: m.permissions().mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    nlink: if ft.is_dir() { 0 } else { m.nlink() },
                    size: if ft.is_dir() { 0 } else { m.size() },
                    content,
                    rdev: m.rdev(),
                    xattrs: xattrs(&p),
                },
            );
        }
    }
    let mut groups: Vec<Vec<String>> = links
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (files, groups)
}

/// The kernel's answer: each layer's whiteouts applied to the lower content, then `tar -x`.
fn kernel_reference(dir: &Path, tars: &[PathBuf]) -> (BTreeMap<String, Node>, Vec<Vec<String>>) {
    let img = dir.join("kernel.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(1 << 30).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096"]).arg(&img));
    let mnt = dir.join("kernel-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt));
    let m = Mount(mnt.clone());
    for t in tars {
        let mut ar = tar::Archive::new(std::fs::File::open(t).unwrap());
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let path = e.path().unwrap().into_owned();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let parent = mnt.join(path.parent().unwrap());
            if name == ".wh..wh..opq" {
                for c in std::fs::read_dir(&parent).unwrap() {
                    let c = c.unwrap().path();
                    if std::fs::symlink_metadata(&c).unwrap().is_dir() {
                        std::fs::remove_dir_all(&c).unwrap();
                    } else {
                        std::fs::remove_file(&c).unwrap();
                    }
                }
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let target = parent.join(hidden);
                if let Ok(md) = std::fs::symlink_metadata(&target) {
                    if md.is_dir() {
                        std::fs::remove_dir_all(&target).unwrap();
                    } else {
                        std::fs::remove_file(&target).unwrap();
                    }
                }
            } else {
                // An entry replaces what is there unless both are directories (as containerd).
                let target = parent.join(&name);
                if let Ok(md) = std::fs::symlink_metadata(&target) {
                    let dir_entry = e.header().entry_type() == tar::EntryType::Directory;
                    if md.is_dir() && !dir_entry {
                        std::fs::remove_dir_all(&target).unwrap();
                    } else if !(md.is_dir() || dir_entry && md.file_type().is_symlink()) {
                        std::fs::remove_file(&target).unwrap();
                    }
                }
            }
        }
        run(Command::new("tar")
            .args(["-xpf"])
            .arg(t)
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "--exclude=.wh.*", "-C"])
            .arg(&mnt));
        // GNU tar leaves some directory times at "now" (its delayed metadata interacts with
        // its delayed links); set them from the tar, as containerd does after a layer.
        let mut ar = tar::Archive::new(std::fs::File::open(t).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.header().entry_type() != tar::EntryType::Directory {
                continue;
            }
            let mut secs = e.header().mtime().unwrap() as i64;
            if let Some(pax) = e.pax_extensions().unwrap() {
                for x in pax {
                    let x = x.unwrap();
                    if x.key().unwrap() == "mtime" {
                        secs = x.value().unwrap().split('.').next().unwrap().parse().unwrap();
                    }
                }
            }
            let path = mnt.join(e.path().unwrap());
            let ts = nix::sys::time::TimeSpec::new(secs, 0);
            nix::sys::stat::utimensat(None, &path, &ts, &ts, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
        }
    }
    let r = manifest(&mnt);
    drop(m);
    std::fs::remove_file(&img).unwrap();
    r
}

fn compare(ours: &(BTreeMap<String, Node>, Vec<Vec<String>>), kernel: &(BTreeMap<String, Node>, Vec<Vec<String>>)) {
    let (a, b) = (&ours.0, &kernel.0);
    let only_ours: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_kernel: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_kernel.is_empty(),
        "only in ours: {only_ours:?}\nonly in the kernel's: {only_kernel:?}"
    );
    let diffs: Vec<String> = a
        .iter()
        .filter(|(k, n)| *n != &b[*k])
        .map(|(k, n)| format!("{k}:\n  ours:   {n:?}\n  kernel: {:?}", b[k]))
        .collect();
    assert!(diffs.is_empty(), "{} entries differ:\n{}", diffs.len(), diffs.join("\n"));
    assert_eq!(ours.1, kernel.1, "hard-link groups differ");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn edge_case_layers_match_the_kernel() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let tars = edge_case_layers();
    let mut plain = Vec::new();
    let mut inputs = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        let tp = p.join(format!("l{i}.tar"));
        std::fs::write(&tp, t).unwrap();
        plain.push(tp.clone());
        // The three input forms: plain, gzip, zstd.
        let input = match i {
            0 => tp,
            1 => {
                let gz = p.join("l1.tar.gz");
                let mut e =
                    flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
                e.write_all(t).unwrap();
                e.finish().unwrap();
                gz
            }
            _ => {
                let zs = p.join("l2.tar.zst");
                std::fs::write(&zs, zstd::encode_all(&t[..], 3).unwrap()).unwrap();
                zs
            }
        };
        inputs.push(input);
    }
    let mut layers = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let l = apply_layer(p, i, input, &layers, i == 0);
        layers.push(l);
        fsck_image(p, &layers);
    }
    // ours, through the kernel
    let cfg = p.join("ro.json");
    let lowers: Vec<String> = layers.iter().map(|l| format!(r#"{{"file":"{}"}}"#, l.display())).collect();
    std::fs::write(&cfg, format!(r#"{{"lowers":[{}]}}"#, lowers.join(","))).unwrap();
    let a = Attach::start(&cfg, &p.join("run"));
    let ours = {
        let m = Mount::new(&a.device, &p.join("ours"), true);
        manifest(&m.0)
    };
    a.stop();
    let kernel = kernel_reference(p, &plain);
    assert!(ours.0.len() > 40, "too few files: {}", ours.0.len());
    compare(&ours, &kernel);
    // spot checks of the semantics themselves
    let f = &ours.0;
    assert!(!f.contains_key("etc/passwd") && f.contains_key("etc/passwd2"));
    assert!(f.contains_key("opq/c") && !f.contains_key("opq/a"));
    assert!(!f.contains_key("del"));
    assert_eq!(f["usr/lib/through-symlink"].kind, "file");
    assert_eq!(f["bin/ls"].kind, "dir");
    assert_eq!(f["bin/hl"].nlink, 3, "busybox, sh and hl");
    assert_eq!(f["times/before-1970"].mtime, (-1_000_000, 0));
    assert_eq!(f["times/nanoseconds"].mtime, (1_700_000_000, 123_456_789));
    assert_eq!((f["times/big-ids"].uid, f["times/big-ids"].gid), (100_000, 3_000_000));
}

#[test]
fn the_reference_source_layer_with_mkfs_equals_the_reference_layer() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let ours = apply_layer(p, 0, &reference("hello-world-amd64-source-layer.tar.gz"), &[], true);
    fsck_image(p, std::slice::from_ref(&ours));
    let mut trees = Vec::new();
    for (name, layer) in [("ours", ours), ("theirs", reference("hello-world-amd64-overlaybd-layer.tar"))] {
        let cfg = p.join(format!("{name}.json"));
        std::fs::write(&cfg, format!(r#"{{"lowers":[{{"file":"{}"}}]}}"#, layer.display())).unwrap();
        let a = Attach::start(&cfg, &p.join("run"));
        {
            let m = Mount::new(&a.device, &p.join(name), true);
            trees.push(manifest(&m.0));
        }
        a.stop();
    }
    compare(&trees[0], &trees[1]);
    assert_eq!(trees[0].0["hello"].content, "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014");
}

#[test]
fn a_layer_over_the_reference_base_layer_mounts() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let base = base_layer(p);
    let mut l = Layer::new();
    l.add("app", Kind::Dir, &meta(0o755));
    l.add("app/run.sh", Kind::File(b"#!/bin/sh\necho hi\n".to_vec()), &meta(0o755));
    let t = p.join("app.tar");
    std::fs::write(&t, l.finish()).unwrap();
    let ours = apply_layer(p, 0, &t, std::slice::from_ref(&base), false);
    fsck_image(p, &[base.clone(), ours.clone()]);
    let cfg = p.join("ro.json");
    std::fs::write(&cfg, format!(r#"{{"lowers":[{{"file":"{}"}},{{"file":"{}"}}]}}"#, base.display(), ours.display()))
        .unwrap();
    let a = Attach::start(&cfg, &p.join("run"));
    {
        let m = Mount::new(&a.device, &p.join("mnt"), true);
        assert_eq!(std::fs::read(m.0.join("app/run.sh")).unwrap(), b"#!/bin/sh\necho hi\n");
    }
    a.stop();
}

/// Runs `c` as `nobody` when we are root (no capabilities, no device access).
fn unprivileged(c: &mut Command) -> Command {
    if !nix::unistd::geteuid().is_root() {
        let mut n = Command::new(c.get_program());
        n.args(c.get_args());
        return n;
    }
    let mut n = Command::new("setpriv");
    n.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]);
    n.arg(c.get_program()).args(c.get_args());
    n
}

#[test]
fn apply_and_commit_run_unprivileged_and_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(p, Some(65534.into()), Some(65534.into())).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tars = edge_case_layers();
    let t = p.join("l0.tar");
    std::fs::write(&t, &tars[0]).unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut digests = Vec::new();
    for run_no in 0..2 {
        let (data, index, layer) =
            (p.join(format!("d{run_no}")), p.join(format!("i{run_no}")), p.join(format!("layer{run_no}")));
        let mut c = tool("overlaybd-create");
        c.arg("-s").arg(&data).arg(&index).args(["1", "--mkfs"]);
        let o = out(&mut unprivileged(&mut c));
        assert!(o.status.success(), "{:?}: {}", c, String::from_utf8_lossy(&o.stderr));
        let cfg = p.join(format!("c{run_no}.json"));
        std::fs::write(&cfg, format!(r#"{{"upper":{{"data":"{}","index":"{}"}}}}"#, data.display(), index.display()))
            .unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut apply = tool("overlaybd-apply");
        apply.arg(&t).arg(&cfg);
        let mut commit = tool("overlaybd-commit");
        commit.args(["-z", "-t", "--uuid", "11111111-2222-3333-4444-555555555555"]).arg(&data).arg(&index).arg(&layer);
        for c in [&mut apply, &mut commit] {
            let o = out(&mut unprivileged(c));
            assert!(o.status.success(), "{:?}: {}", c, String::from_utf8_lossy(&o.stderr));
        }
        fsck_image(p, std::slice::from_ref(&layer));
        digests.push(sha256_file(&layer));
    }
    assert_eq!(digests[0], digests[1], "the same input gave two different layers");
}

/// `overlaybd-apply` over a fresh raw image of `size` bytes with `--mkfs`: its output.
fn apply_raw(dir: &Path, input: &[u8], size: u64, extra: &[&str]) -> Output {
    let img = dir.join("raw.img");
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let t = dir.join("bad.tar");
    std::fs::write(&t, input).unwrap();
    out(tool("overlaybd-apply").arg(&t).arg(&img).args(["--raw", "--mkfs"]).args(extra))
}

fn assert_fails(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "succeeded, expected an error about {what}");
    assert!(err.to_lowercase().contains(&what.to_lowercase()), "the error does not say {what:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let good = edge_case_layers().remove(0);
    // truncated tar (inside a file's data, and inside a header)
    assert_fails(&apply_raw(p, &good[..good.len() / 2], 64 << 20, &[]), "applying");
    assert_fails(&apply_raw(p, &good[..1500], 64 << 20, &[]), "applying");
    // corrupt gzip
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&good).unwrap();
    let mut gz = e.finish().unwrap();
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    gz[mid + 1] ^= 0x55;
    // (the gzip checksum catches it at the end, or the tar reader on garbage before that)
    let o = apply_raw(p, &gz, 64 << 20, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && (err.contains("gzip") || err.contains("layer tar")) && !err.contains("panicked"),
        "{err}"
    );
    // checksum mismatch, and a bad checksum argument
    let zero = "0".repeat(64);
    assert_fails(&apply_raw(p, &good, 64 << 20, &["--checksum", &zero]), "checksum mismatch");
    assert_fails(&apply_raw(p, &good, 64 << 20, &["--checksum", "abc"]), "not a sha256");
    let right = format!("sha256:{}", sha256(&good));
    assert!(apply_raw(p, &good, 64 << 20, &["--checksum", &right]).status.success());
    // escaping paths
    for (name, kind) in [("../evil", Kind::File(b"x".to_vec())), ("/etc/evil", Kind::File(b"x".to_vec()))] {
        let mut l = Layer::new();
        l.add(name, kind, &meta(0o644));
        assert_fails(&apply_raw(p, &l.finish(), 64 << 20, &[]), "refusing");
    }
    let mut l = Layer::new();
    l.add("up", Kind::Symlink("../../.."), &meta(0o777));
    l.add("up/evil", Kind::File(b"x".to_vec()), &meta(0o644));
    assert_fails(&apply_raw(p, &l.finish(), 64 << 20, &[]), "climbs above the image root");
    let mut l = Layer::new();
    l.add("loop", Kind::Symlink("loop"), &meta(0o777));
    l.add("loop/x", Kind::File(b"x".to_vec()), &meta(0o644));
    assert_fails(&apply_raw(p, &l.finish(), 64 << 20, &[]), "too many levels");
    // a hard link to nothing
    let mut l = Layer::new();
    l.add("h", Kind::Hard("missing"), &meta(0o644));
    assert_fails(&apply_raw(p, &l.finish(), 64 << 20, &[]), "does not exist");
    // the filesystem runs out of blocks, and of inodes
    let mut l = Layer::new();
    l.add("huge", Kind::File(random(40 << 20, 9)), &meta(0o644));
    assert_fails(&apply_raw(p, &l.finish(), 32 << 20, &[]), "could not allocate block");
    let mut l = Layer::new();
    for i in 0..3000 {
        l.add(&format!("f{i}"), Kind::File(Vec::new()), &meta(0o644));
    }
    assert_fails(&apply_raw(p, &l.finish(), 32 << 20, &[]), "could not allocate inode");
}

#[test]
fn a_full_upper_fails_clearly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"]).arg(&small));
    let m = Mount(small.clone());
    let (data, index) = (small.join("d"), small.join("i"));
    run(tool("overlaybd-create").arg("-s").arg(&data).arg(&index).args(["1", "--mkfs"]));
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, format!(r#"{{"upper":{{"data":"{}","index":"{}"}}}}"#, data.display(), index.display()))
        .unwrap();
    let mut l = Layer::new();
    l.add("huge", Kind::File(random(40 << 20, 9)), &meta(0o644));
    let t = dir.path().join("big.tar");
    std::fs::write(&t, l.finish()).unwrap();
    let o = out(tool("overlaybd-apply").arg(&t).arg(&cfg));
    assert_fails(&o, "No space left on device");
    drop(m);
}

#[test]
fn the_layer_can_come_from_stdin_or_a_fifo() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let mut l = Layer::new();
    l.add("x", Kind::File(random(100_000, 11)), &meta(0o644));
    let bytes = l.finish();
    let sum = format!("sha256:{}", sha256(&bytes));
    // stdin
    let img = p.join("a.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let mut child = tool("overlaybd-apply")
        .arg("-")
        .arg(&img)
        .args(["--raw", "--mkfs", "--checksum", &sum])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // a FIFO, written by another thread
    let fifo = p.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (f2, b2) = (fifo.clone(), bytes.clone());
    let writer =
        std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(f2).unwrap().write_all(&b2).unwrap());
    let img2 = p.join("b.img");
    std::fs::File::create(&img2).unwrap().set_len(64 << 20).unwrap();
    let o = out(tool("overlaybd-apply").arg(&fifo).arg(&img2).args(["--raw", "--mkfs", "--checksum", &sum]));
    // if the tool never opened the FIFO, opening it here lets the writer's open return (and its
    // write fail) rather than block the join forever
    drop(std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).unwrap());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    writer.join().unwrap();
    let o = out(Command::new("e2fsck").arg("-fn").arg(&img2));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
