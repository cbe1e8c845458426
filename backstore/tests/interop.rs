//! Interop both ways with the independent reader/writer `obd_inspect.py` (written from the spec,
//! not from this code): what we write it reads with every checksum valid and the same bytes;
//! what it packs we read.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use backstore::uuid::LayerUuid;
use backstore::{BlockDevice, Stack};
use common::*;

/// The decompressed reference LSMT (71 MB, mostly zeros).
fn hello_lsmt(dir: &Path) -> PathBuf {
    let out = dir.join("hello.lsmt");
    run(Command::new(bin("overlaybd-zfile"))
        .args(["-x", "-t"])
        .arg(reference("hello-world-amd64-overlaybd-layer.tar"))
        .arg(&out));
    out
}

fn inspect_info(blob: &Path) -> serde_json::Value {
    serde_json::from_str(&run(inspect().arg("info").arg("--json").arg(blob))).expect("json")
}

fn assert_checksums_valid(info: &serde_json::Value, what: &str) {
    let z = &info["zfile"];
    assert_eq!(z["per_block_crc"], true, "{what}: {z}");
    assert_eq!(z["block_crc_failures"], 0, "{what}: {z}");
    assert_eq!(z["header_digest_ok"], true, "{what}: {z}");
    assert_eq!(z["jump_table_crc_ok"], true, "{what}: {z}");
    assert!(z["layout_warning"].is_null(), "{what}: {z}");
}

#[test]
fn what_we_write_the_independent_reader_reads() {
    let dir = tempfile::tempdir().unwrap();
    let lsmt = hello_lsmt(dir.path());
    let want = std::fs::read(&lsmt).unwrap();
    for algo in ["lz4", "zstd"] {
        for bs in ["4", "16", "64"] {
            for tar in [false, true] {
                let what = format!("{algo}/{bs}K/{}", if tar { "tar" } else { "bare" });
                let out = dir.path().join(format!("ours-{algo}-{bs}-{tar}"));
                let mut cmd = Command::new(bin("overlaybd-zfile"));
                cmd.args(["--algorithm", algo, "--bs", bs]);
                if tar {
                    cmd.arg("-t");
                }
                run(cmd.arg(&lsmt).arg(&out));
                let info = inspect_info(&out);
                assert_checksums_valid(&info, &what);
                assert_eq!(info["zfile"]["algorithm"], algo, "{what}");
                assert_eq!(info["zfile"]["block_size"], bs.parse::<u64>().unwrap() * 1024, "{what}");
                assert_eq!(info["tar"].is_null(), !tar, "{what}");
                assert_eq!(
                    info["zfile"]["header"]["flags"], 0x13,
                    "{what}: overlaybd-zfile does not overwrite the header"
                );
                let back = dir.path().join(format!("back-{algo}-{bs}-{tar}"));
                run(inspect().arg("unwrap").arg(&out).arg(&back));
                assert!(
                    std::fs::read(&back).unwrap() == want,
                    "{what}: the independent reader extracts different bytes"
                );
                // and our own tools agree
                run(Command::new(bin("overlaybd-zfile")).arg("--verify").arg(&out));
                std::fs::remove_file(&back).unwrap();
                std::fs::remove_file(&out).unwrap();
            }
        }
    }
}

#[test]
fn what_the_independent_tool_packs_we_read() {
    let dir = tempfile::tempdir().unwrap();
    let lsmt = hello_lsmt(dir.path());
    let want = std::fs::read(&lsmt).unwrap();
    for algo in ["lz4", "zstd"] {
        for bs in ["4", "32"] {
            for (i, extra) in
                [&[][..], &["--tar"][..], &["--no-overwrite-header"][..], &["--tar", "--no-overwrite-header"][..]]
                    .iter()
                    .enumerate()
            {
                let what = format!("{algo}/{bs}K/{extra:?}");
                let packed = dir.path().join(format!("theirs-{algo}-{bs}-{i}"));
                run(inspect().arg("pack").args(["--algorithm", algo, "--bs", bs]).args(*extra).arg(&lsmt).arg(&packed));
                let back = dir.path().join(format!("x-{algo}-{bs}-{i}"));
                run(Command::new(bin("overlaybd-zfile")).arg("-x").arg(&packed).arg(&back));
                assert!(std::fs::read(&back).unwrap() == want, "{what}: we extract different bytes");
                run(Command::new(bin("overlaybd-zfile")).arg("--verify").arg(&packed));
                let l = backstore::detect::open_layer_file(&packed).unwrap();
                assert_eq!(l.trailer().uuid.to_string(), "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31", "{what}");
                std::fs::remove_file(&back).unwrap();
                std::fs::remove_file(&packed).unwrap();
            }
        }
    }
}

/// A sector-granular model of a disk: LBA → 512 bytes (absent = zeros).
#[derive(Default, Clone)]
struct Model(BTreeMap<u64, Vec<u8>>);

impl Model {
    fn write(&mut self, off: u64, data: &[u8]) {
        for (i, s) in data.chunks(512).enumerate() {
            self.0.insert(off / 512 + i as u64, s.to_vec());
        }
    }
    fn discard(&mut self, off: u64, len: u64) {
        for lba in off / 512..(off + len) / 512 {
            self.0.remove(&lba);
        }
    }
    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (lba, s) in self.0.range(off / 512..(off + len as u64) / 512) {
            let p = (lba * 512 - off) as usize;
            out[p..p + 512].copy_from_slice(s);
        }
        out
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        // half compressible, half random
        let mut v = Vec::with_capacity(n);
        let pattern = self.next() % 3;
        while v.len() < n {
            let x = self.next();
            match pattern {
                0 => v.extend_from_slice(&x.to_le_bytes()),
                1 => v.extend_from_slice(b"overlaybd "),
                _ => v.extend_from_slice(&[(x % 7) as u8; 8]),
            }
        }
        v.truncate(n);
        v
    }
}

const SPAN: u64 = 48 << 20; // where the test writes, within the 1 GiB device

/// Random writes and discards through a device (a stack with a writable upper) and the model.
fn scribble(layer: &dyn BlockDevice, model: &mut Model, rng: &mut Rng, ops: usize) {
    for _ in 0..ops {
        let off = rng.next() % (SPAN / 512) * 512;
        let len = ((1 + rng.next() % 2048) * 512).min(SPAN - off);
        if rng.next().is_multiple_of(5) {
            layer.discard(off, len).unwrap();
            model.discard(off, len);
        } else {
            let data = rng.bytes(len as usize);
            layer.write_at(&data, off).unwrap();
            model.write(off, &data);
        }
    }
}

fn new_layer(dir: &Path, name: &str, sparse: bool) -> (PathBuf, PathBuf) {
    let (d, i) = (dir.join(format!("{name}.data")), dir.join(format!("{name}.index")));
    let mut cmd = Command::new(bin("overlaybd-create"));
    cmd.arg(&d).arg(&i).arg("1");
    if sparse {
        cmd.arg("-s");
    }
    run(&mut cmd);
    (d, i)
}

fn check_stack(stack: &Stack, model: &Model, what: &str) {
    let mut buf = vec![0u8; 1 << 20];
    for off in (0..SPAN + (1 << 20)).step_by(1 << 20) {
        stack.read_at(&mut buf, off).unwrap();
        let want = model.read(off, buf.len());
        if buf != want {
            let first = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!("{what}: our stack differs from the model at byte {}", off + first as u64);
        }
    }
}

#[test]
fn stacked_layers_agree_with_the_independent_reader() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut model = Model::default();
    let mut blobs = Vec::new();
    // layer 0: append-only, committed as tar(ZFile lz4 4K)
    // layer 1: sparse, committed as ZFile zstd 16K (bare)
    // layer 2: append-only, committed raw, sealed-then-commit_sealed
    for (n, (sparse, args)) in
        [(false, vec!["-z", "-t"]), (true, vec!["-z", "--algorithm", "zstd", "--bs", "16"]), (false, vec![])]
            .into_iter()
            .enumerate()
    {
        let (d, i) = new_layer(p, &format!("l{n}"), sparse);
        // written through a device whose lowers are the layers committed so far
        let dev = Stack::open_files(&blobs, Some((&d, &i))).unwrap();
        scribble(&dev, &mut model, &mut rng, 60);
        dev.flush().unwrap();
        drop(dev);
        let out = p.join(format!("l{n}.blob"));
        let uuid = LayerUuid::random().to_string();
        if n == 2 {
            run(Command::new(bin("overlaybd-commit")).arg("--seal").arg(&d).arg(&i));
            run(Command::new(bin("overlaybd-commit")).args(["--commit_sealed", "--uuid", &uuid]).arg(&d).arg(&out));
        } else {
            run(Command::new(bin("overlaybd-commit"))
                .args(&args)
                .args(["--uuid", &uuid, "-m", "layer"])
                .arg(&d)
                .arg(&i)
                .arg(&out));
        }
        let info = inspect_info(&out);
        if !args.is_empty() {
            assert_checksums_valid(&info, &format!("layer {n}"));
        }
        assert_eq!(info["lsmt"]["uuid"], uuid);
        blobs.push(out);
        check_stack(&Stack::open_files(&blobs, None).unwrap(), &model, &format!("after committing layer {n}"));
    }
    // a writable upper on top
    let (ud, ui) = new_layer(p, "upper", false);
    let dev = Stack::open_files(&blobs, Some((&ud, &ui))).unwrap();
    scribble(&dev, &mut model, &mut rng, 40);
    drop(dev);

    let stack = Stack::open_files(&blobs, Some((&ud, &ui))).unwrap();
    assert_eq!(stack.size(), 1 << 30);
    check_stack(&stack, &model, "with the upper");

    // the independent reader's image of the same stack
    let img = p.join("theirs.img");
    let top = format!("{},{}", ud.display(), ui.display());
    let mut cmd = inspect();
    cmd.arg("extract");
    for b in &blobs {
        cmd.arg("--lower").arg(b);
    }
    run(cmd.arg(&top).arg(&img));
    let theirs = std::fs::read(&img).unwrap();
    assert_eq!(theirs.len() as u64, 1 << 30);
    assert!(
        theirs[..SPAN as usize] == model.read(0, SPAN as usize)[..],
        "the independent reader's image differs from the model"
    );
    assert!(theirs[SPAN as usize..].iter().all(|&b| b == 0));

    // and our dump tool writes the same image
    let ours = p.join("ours.img");
    run(Command::new(bin("overlaybd-dump")).args(&blobs).arg("--upper").arg(&ud).arg(&ui).arg("-o").arg(&ours));
    assert!(std::fs::read(&ours).unwrap() == theirs, "overlaybd-dump differs from the independent reader");
}
