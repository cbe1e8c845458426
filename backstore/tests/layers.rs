//! Writable layers, sealing, commit and the merged stack, checked against byte models.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use backstore::detect::open_layer_file;
use backstore::lsmt::writable::{CreateOptions, Kind, Recovery};
use backstore::lsmt::{write_committed, CommitOptions, CommittedLayer, WritableLayer};
use backstore::uuid::LayerUuid;
use backstore::{BlockDevice, Error, Stack};
use common::*;

const MIB: u64 = 1 << 20;

fn create(dir: &Path, name: &str, vsize: u64, sparse: bool) -> (PathBuf, PathBuf) {
    let (d, i) = (dir.join(format!("{name}.data")), dir.join(format!("{name}.index")));
    let opts = CreateOptions { virtual_size: vsize, uuid: LayerUuid::random(), parent_uuid: LayerUuid::NIL, sparse };
    WritableLayer::create(&d, &i, &opts).unwrap();
    (d, i)
}

fn open(d: &Path, i: &Path) -> WritableLayer {
    WritableLayer::open(d, i, true, Recovery::Strict).unwrap()
}

/// Commits a writable layer to `out` (raw LSMT) and opens it.
fn commit(l: &WritableLayer, out: &Path) -> CommittedLayer {
    let (uuid, parent) = l.uuids();
    let opts = CommitOptions { uuid, parent_uuid: parent, user_tag: b"msg".to_vec(), virtual_size: l.virtual_size() };
    let mut f = std::fs::File::create(out).unwrap();
    write_committed(&l.segments(), |s, b| l.read_segment(s, b), &opts, &mut f).unwrap();
    open_layer_file(out).unwrap()
}

fn fill(byte: u8, n: u64) -> Vec<u8> {
    vec![byte; n as usize]
}

fn read(dev: &dyn BlockDevice, off: u64, n: u64) -> Vec<u8> {
    let mut b = vec![0u8; n as usize];
    dev.read_at(&mut b, off).unwrap();
    b
}

#[test]
fn append_only_layer_newest_write_wins_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = create(dir.path(), "w", 64 * MIB, false);
    let l = open(&d, &i);
    l.write_at(&fill(1, MIB), 0).unwrap();
    l.write_at(&fill(2, 4096), 4096).unwrap();
    l.write_at(&fill(3, 9 * MIB), 10 * MIB).unwrap(); // split into 4 MiB log entries
    l.discard(512, 1024).unwrap();
    l.flush().unwrap();
    drop(l);
    let l = open(&d, &i);
    assert_eq!(l.log_entries(), 1 + 1 + 3 + 1);
    let stack = Stack::new(vec![], Some(l)).unwrap();
    let got = read(&stack, 0, 2 * MIB);
    let mut want = fill(1, MIB);
    want[512..1536].fill(0);
    want[4096..8192].fill(2);
    want.extend(fill(0, MIB));
    assert!(got == want);
    assert!(read(&stack, 10 * MIB, 9 * MIB) == fill(3, 9 * MIB));
}

#[test]
fn sealed_and_committed_layers_read_like_the_writable_one() {
    let dir = tempfile::tempdir().unwrap();
    for sparse in [false, true] {
        let (d, i) = create(dir.path(), &format!("s{sparse}"), 32 * MIB, sparse);
        let l = open(&d, &i);
        assert_eq!(l.kind(), if sparse { Kind::Sparse } else { Kind::AppendOnly });
        for k in 0..50u64 {
            l.write_at(&fill(k as u8 + 1, 8192 * (k % 5 + 1)), (k * 7919 % 4000) * 8192).unwrap();
        }
        l.discard(3 * MIB, MIB).unwrap();
        let before = read(&Stack::new(vec![], Some(open(&d, &i))).unwrap(), 0, 32 * MIB);
        let committed = commit(&l, &dir.path().join(format!("c{sparse}")));
        assert_eq!(committed.trailer().user_tag, b"msg");
        assert!(
            read(&Stack::new(vec![committed], None).unwrap(), 0, 32 * MIB) == before,
            "committed (sparse={sparse})"
        );
        l.seal().unwrap();
        let sealed = open_layer_file(&d).unwrap();
        assert_eq!(sealed.header().flags, if sparse { 0x13 } else { 0x03 });
        assert_eq!(sealed.trailer().flags, if sparse { 0x16 } else { 0x06 });
        assert!(read(&Stack::new(vec![sealed], None).unwrap(), 0, 32 * MIB) == before, "sealed (sparse={sparse})");
        // a sealed file cannot be reopened for writing
        assert!(matches!(WritableLayer::open(&d, &i, true, Recovery::Strict), Err(Error::Format { .. })));
    }
}

#[test]
fn zeroed_entries_hide_lower_layers_and_holes_read_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (d0, i0) = create(dir.path(), "l0", 16 * MIB, false);
    let l0 = open(&d0, &i0);
    l0.write_at(&fill(0xAA, 8 * MIB), 0).unwrap();
    let c0 = commit(&l0, &dir.path().join("c0"));
    let (d1, i1) = create(dir.path(), "l1", 0, false);
    let l1 = open(&d1, &i1);
    l1.write_at(&fill(0xBB, MIB), MIB).unwrap();
    l1.discard(4 * MIB, MIB).unwrap();
    let c1 = commit(&l1, &dir.path().join("c1"));
    assert_eq!(c1.index().segments().iter().filter(|s| s.zeroed).count(), 1);
    // read-only stack: size is the topmost non-zero virtual size (c1 has 0)
    let stack = Stack::new(vec![c0, c1], None).unwrap();
    assert_eq!(stack.size(), 16 * MIB);
    assert!(read(&stack, 0, MIB) == fill(0xAA, MIB));
    assert!(read(&stack, MIB, MIB) == fill(0xBB, MIB));
    assert!(read(&stack, 4 * MIB, MIB) == fill(0, MIB), "zeroed entry hides the lower data");
    assert!(read(&stack, 5 * MIB, MIB) == fill(0xAA, MIB));
    assert!(read(&stack, 9 * MIB, MIB) == fill(0, MIB), "unmapped reads as zeros");
    assert!(stack.reads_zeros(4 * MIB, MIB) && stack.reads_zeros(9 * MIB, MIB) && !stack.reads_zeros(0, 512));
}

#[test]
fn upper_with_zero_size_takes_the_lowers_size() {
    let dir = tempfile::tempdir().unwrap();
    let (d0, i0) = create(dir.path(), "l0", 8 * MIB, false);
    let c0 = commit(&open(&d0, &i0), &dir.path().join("c0"));
    let (d, i) = create(dir.path(), "up", 0, false);
    let stack = Stack::new(vec![c0], Some(open(&d, &i))).unwrap();
    assert_eq!(stack.size(), 8 * MIB);
    drop(stack);
    assert_eq!(open(&d, &i).virtual_size(), 8 * MIB, "written back to the headers");
}

#[test]
fn sparse_upper_keeps_lower_data_around_partial_block_writes_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (d0, i0) = create(dir.path(), "l0", 4 * MIB, false);
    let l0 = open(&d0, &i0);
    l0.write_at(&fill(0x11, 4 * MIB), 0).unwrap();
    let c0 = dir.path().join("c0");
    commit(&l0, &c0);
    let (d, i) = create(dir.path(), "sp", 0, true);
    {
        let dev = Stack::open_files(&[&c0], Some((&d, &i))).unwrap();
        dev.write_at(&fill(0x22, 512), 4096 + 1024).unwrap(); // one sector inside a 4 KiB block
        dev.discard(MIB + 512, 512).unwrap(); // one sector over lower data
        dev.discard(2 * MIB, MIB).unwrap(); // whole blocks over lower data
    }
    let dev = Stack::open_files(&[&c0], Some((&d, &i))).unwrap();
    let mut want = fill(0x11, 4 * MIB);
    want[4096 + 1024..4096 + 1536].fill(0x22);
    want[(MIB + 512) as usize..(MIB + 1024) as usize].fill(0);
    want[(2 * MIB) as usize..(3 * MIB) as usize].fill(0);
    let got = read(&dev, 0, 4 * MIB);
    let first = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first, None, "after reopen the sparse upper must not hide lower data it did not write");
}

#[test]
fn io_must_be_aligned_and_in_range_and_lowers_are_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = create(dir.path(), "w", MIB, false);
    let c = commit(&open(&d, &i), &dir.path().join("c"));
    let ro = Stack::new(vec![c], None).unwrap();
    assert!(matches!(ro.write_at(&[0; 512], 0), Err(Error::ReadOnly)));
    assert!(matches!(ro.discard(0, 512), Err(Error::ReadOnly)));
    let rw = Stack::new(vec![], Some(open(&d, &i))).unwrap();
    let mut b = [0u8; 512];
    assert!(matches!(rw.read_at(&mut b[..100], 0), Err(Error::Unaligned { .. })));
    assert!(matches!(rw.read_at(&mut b, 100), Err(Error::Unaligned { .. })));
    assert!(matches!(rw.read_at(&mut b, MIB), Err(Error::OutOfRange { .. })));
    assert!(matches!(rw.write_at(&b, MIB - 256), Err(Error::Unaligned { .. })));
    assert!(matches!(rw.write_at(&b, MIB), Err(Error::OutOfRange { .. })));
}

#[test]
fn commit_splits_long_runs_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = create(dir.path(), "w", 64 * MIB, false);
    let l = open(&d, &i);
    l.write_at(&fill(7, 20 * MIB), 0).unwrap();
    l.discard(30 * MIB, 20 * MIB).unwrap();
    let c = commit(&l, &dir.path().join("c"));
    let lens: Vec<(u32, bool)> = c.index().segments().iter().map(|s| (s.length, s.zeroed)).collect();
    // 40960 data sectors: 16320 + 16320 + 8320; the discard was logged in 16383-sector pieces,
    // which are not merged (16383 + 16383 is not below 16383)
    assert_eq!(lens, vec![(16320, false), (16320, false), (8320, false), (16383, true), (16383, true), (8194, true)]);
    assert_eq!(c.on_disk_entries(), 256);
}

#[test]
fn more_than_255_layers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = create(dir.path(), "w", MIB, false);
    let out = dir.path().join("c");
    commit(&open(&d, &i), &out);
    let layers: Vec<CommittedLayer> = (0..256).map(|_| open_layer_file(&out).unwrap()).collect();
    assert!(matches!(Stack::new(layers, None), Err(Error::Limit { .. })));
}

#[test]
fn tools_create_commit_seal_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (d, i) = (p.join("d"), p.join("i"));
    run(Command::new(bin("overlaybd-create"))
        .arg(&d)
        .arg(&i)
        .arg("1")
        .args(["-u", "01bb4fce-3eb1-b56b-05ad-f99504dafd31"]));
    let l = open(&d, &i);
    assert_eq!(l.uuids().1.to_string(), "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31");
    assert_eq!(l.virtual_size(), 1 << 30);
    l.write_at(&fill(9, MIB), 5 * MIB).unwrap();
    drop(l);
    // existing output without -f is refused, with -f replaced
    let out = p.join("out.tar");
    std::fs::write(&out, b"x").unwrap();
    let st = Command::new(bin("overlaybd-commit")).args(["-z", "-t"]).arg(&d).arg(&i).arg(&out).output().unwrap();
    assert!(!st.status.success() && String::from_utf8_lossy(&st.stderr).contains("already exists"));
    run(Command::new(bin("overlaybd-commit"))
        .args(["-z", "-t", "-f", "--uuid", "not-a-uuid", "-m", "hello"])
        .arg(&d)
        .arg(&i)
        .arg(&out));
    let c = open_layer_file(&out).unwrap();
    assert_eq!(c.trailer().uuid, LayerUuid::NIL, "an invalid --uuid gives the all-zero uuid");
    assert_eq!(
        c.trailer().parent_uuid.to_string(),
        "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31",
        "parent kept from the writable layer"
    );
    assert_eq!(c.trailer().user_tag, b"hello");
    let info = run(Command::new(bin("overlaybd-info")).arg("--json").arg(&out));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v[0]["zfile"]["header_flags"], 0x1B);
    assert_eq!(v[0]["zfile"]["trailer_flags"], 0x16);
    assert_eq!(v[0]["tar"]["payload_offset"], 1536);
    // -t without -z is ignored, as in the reference
    let raw = p.join("raw.lsmt");
    run(Command::new(bin("overlaybd-commit")).arg("-t").arg(&d).arg(&i).arg(&raw));
    assert!(open_layer_file(&raw).unwrap().source().size().is_multiple_of(512));
    assert_eq!(&std::fs::read(&raw).unwrap()[..4], b"LSMT");
    // sparse create: data sized vsize + 4096, index empty
    let (sd, si) = (p.join("sd"), p.join("si"));
    run(Command::new(bin("overlaybd-create")).arg("-s").arg(&sd).arg(&si).arg("2"));
    assert_eq!(std::fs::metadata(&sd).unwrap().len(), (2 << 30) + 4096);
    assert_eq!(std::fs::metadata(&si).unwrap().len(), 0);
    // stdin input for overlaybd-zfile, then -x
    let z = p.join("stdin.zfile");
    let input = std::fs::File::open(&raw).unwrap();
    let st = Command::new(bin("overlaybd-zfile")).arg(&z).stdin(input).output().unwrap();
    assert!(st.status.success(), "{st:?}");
    let x = p.join("x");
    run(Command::new(bin("overlaybd-zfile")).arg("-x").arg(&z).arg(&x));
    assert_eq!(std::fs::read(&x).unwrap(), std::fs::read(&raw).unwrap());
    // --seal then --commit_sealed
    run(Command::new(bin("overlaybd-commit")).arg("--seal").arg(&d).arg(&i));
    let cs = p.join("cs");
    run(Command::new(bin("overlaybd-commit")).arg("--commit_sealed").arg(&d).arg(&cs));
    let a = Stack::open_files(&[&cs], None).unwrap();
    let b = Stack::open_files(&[&out], None).unwrap();
    assert!(read(&a, 0, 8 * MIB) == read(&b, 0, 8 * MIB));
    // dump of a config
    let cfg = p.join("config.v1.json");
    std::fs::write(&cfg, format!(r#"{{"lowers": [{{"file": "{}"}}], "resultFile": ""}}"#, out.display())).unwrap();
    let sha = run(Command::new(bin("overlaybd-dump")).arg("-c").arg(&cfg).arg("--sha256"));
    assert_eq!(sha.trim().len(), 64);
}
