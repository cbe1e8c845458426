//! Bad input gets a clear error, never wrong data or a panic.
//!
//! Corrupted, truncated and absurd variants of the real reference blobs and of small layers
//! written here are opened and read; every test asserts the exact error variant and that the
//! message names the file (and the block, for CRC errors). A seeded mutation loop runs the
//! bodies of the fuzz targets (`backstore/fuzz`, included below) on thousands of mutants.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstore::crc::{raw_crc32c, SEED_HEADER};
use backstore::detect::{open_layer, unwrap};
use backstore::io::{MemSource, ReadAt};
use backstore::lsmt::writable::{CreateOptions, Recovery};
use backstore::lsmt::{write_committed, CommitOptions, CommittedLayer, LsmtHeader, Segment, WritableLayer};
use backstore::tar;
use backstore::uuid::LayerUuid;
use backstore::zfile::header::flags as zflags;
use backstore::zfile::{Algorithm, ZFile, ZFileHeader, ZFileOptions, ZFileWriter};
use backstore::{Error, Result, SECTOR};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "../fuzz/src/lib.rs"]
mod fuzz_bodies;

use fuzz_bodies::{open_layer_body, writable_index_body, Contents};

// ---------------------------------------------------------------------------------------------
// Helpers

fn reference(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/reference").join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: reference blob {} is not available", p.display());
        None
    }
}

const HELLO: &str = "hello-world-amd64-overlaybd-layer.tar";
/// Figures of the hello-world blob (testdata README).
const HELLO_PAYLOAD: u64 = 1536;
const HELLO_PAYLOAD_LEN: u64 = 639_491;
const HELLO_JUMP_TABLE: u64 = 569_127;
const HELLO_BLOCKS: u64 = 17_463;

fn hello() -> Option<(Vec<u8>, String)> {
    let p = reference(HELLO)?;
    Some((std::fs::read(&p).expect("read the hello-world blob"), p.display().to_string()))
}

fn mem(data: Vec<u8>, name: &str) -> Arc<dyn ReadAt> {
    Arc::new(MemSource::new(data, name))
}

fn open_mem(data: &[u8], name: &str) -> Result<CommittedLayer> {
    open_layer(mem(data.to_vec(), name), true)
}

fn expect_err<T>(r: Result<T>, what: &str) -> Error {
    match r {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(e) => e,
    }
}

/// Asserts that `e`'s message names `file` and returns the message.
fn names(e: &Error, file: &str) -> String {
    let msg = e.to_string();
    assert!(msg.contains(file), "the message does not name {file:?}: {msg}");
    msg
}

fn assert_format(e: &Error, file: &str, needle: &str) {
    let msg = names(e, file);
    assert!(matches!(e, Error::Format { .. }), "expected Error::Format, got {e:?}");
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
}

fn assert_truncated(e: &Error, file: &str) {
    names(e, file);
    assert!(matches!(e, Error::Truncated { .. }), "expected Error::Truncated, got {e:?}");
}

fn assert_truncated_or_format(e: &Error, file: &str) {
    names(e, file);
    assert!(matches!(e, Error::Truncated { .. } | Error::Format { .. }), "expected Truncated or Format, got {e:?}");
}

fn assert_block_checksum(e: &Error, file: &str, want_block: u64) {
    let msg = names(e, file);
    match e {
        Error::BlockChecksum { block, .. } => assert_eq!(*block, want_block, "{msg}"),
        other => panic!("expected Error::BlockChecksum for block {want_block}, got {other:?}"),
    }
    assert!(msg.contains(&format!("block {want_block} ")), "the message does not name block {want_block}: {msg}");
}

fn flip(data: &[u8], pos: u64) -> Vec<u8> {
    let mut d = data.to_vec();
    d[pos as usize] ^= 0x5A;
    d
}

fn put_u64(d: &mut [u8], at: u64, v: u64) {
    d[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(d: &mut [u8], at: u64, v: u32) {
    d[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

/// Raw data that compresses somewhat: text-like runs mixed with random bytes.
fn sample_data(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(len);
    while d.len() < len {
        if rng.gen_bool(0.7) {
            let word: &[u8] = [&b"overlaybd "[..], b"block ", b"layer ", b"zfile "][rng.gen_range(0..4)];
            d.extend_from_slice(word);
        } else {
            d.push(rng.gen());
        }
    }
    d.truncate(len);
    d
}

fn zfile_of(raw: &[u8], algorithm: Algorithm, overwrite_header: bool) -> Vec<u8> {
    let opts = ZFileOptions { algorithm, block_size: 4096, verify: true, threads: 1 };
    let mut w = ZFileWriter::new(Vec::new(), opts).expect("start a ZFile");
    w.push(raw).expect("compress");
    let (mut out, h) = w.finish().expect("finish the ZFile");
    if overwrite_header {
        out[..512].copy_from_slice(&h.encode());
    }
    out
}

fn tar_of(payload: &[u8]) -> Vec<u8> {
    let mut t = tar::headers(payload.len() as u64, 0o100644);
    t.extend_from_slice(payload);
    t.extend(tar::trailer(payload.len() as u64));
    t
}

const SMALL_VSIZE: u64 = 256 << 10;

/// A small committed LSMT layer (some writes, an overwrite, a discard) and its device image.
fn small_committed(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let (dp, ip) = (dir.path().join("data"), dir.path().join("index"));
    let opts =
        CreateOptions { virtual_size: SMALL_VSIZE, uuid: LayerUuid::NIL, parent_uuid: LayerUuid::NIL, sparse: false };
    WritableLayer::create(&dp, &ip, &opts).expect("create");
    let layer = WritableLayer::open(&dp, &ip, true, Recovery::Strict).expect("open");
    let mut image = vec![0u8; SMALL_VSIZE as usize];
    let sectors = SMALL_VSIZE / SECTOR;
    for _ in 0..6 {
        let lba = rng.gen_range(0..sectors - 16);
        let n = rng.gen_range(1..16u64);
        let buf = sample_data(&mut rng, (n * SECTOR) as usize);
        layer.write_at(&buf, lba * SECTOR).expect("write");
        image[(lba * SECTOR) as usize..((lba + n) * SECTOR) as usize].copy_from_slice(&buf);
    }
    let (lba, n) = (rng.gen_range(0..sectors - 8), 4u64);
    layer.discard(lba * SECTOR, n * SECTOR).expect("discard");
    image[(lba * SECTOR) as usize..((lba + n) * SECTOR) as usize].fill(0);
    let mut out = Vec::new();
    let commit = CommitOptions {
        uuid: LayerUuid::NIL,
        parent_uuid: LayerUuid::NIL,
        user_tag: b"bad input".to_vec(),
        virtual_size: SMALL_VSIZE,
    };
    write_committed(&layer.segments(), |s, b| layer.read_segment(s, b), &commit, &mut out).expect("commit");
    (out, image)
}

/// Trailer of a committed LSMT file.
fn lsmt_trailer(lsmt: &[u8]) -> LsmtHeader {
    LsmtHeader::decode(&lsmt[lsmt.len() - 4096..]).expect("trailer")
}

// ---------------------------------------------------------------------------------------------
// Flipped bytes in compressed blocks: BlockChecksum naming the file and the block

fn check_block_flips(blob: &[u8], name: &str, raw: &[u8]) {
    let z = ZFile::open(mem(blob.to_vec(), name), true).expect("the intact ZFile opens");
    let n = z.blocks();
    assert!(n >= 8, "the test ZFile has only {n} blocks");
    let bs = z.block_size();
    let mid = n / 2;
    // (block, byte inside the stored block): first byte of block 0, a middle byte, the last
    // compressed byte of the last block, and each of the CRC bytes of a middle block.
    let len = |i: u64| z.block_offset(i + 1) - z.block_offset(i);
    let mut cases = vec![(0, 0), (mid, len(mid) / 2), (n - 1, len(n - 1) - 5), (1, 1)];
    for k in 1..=4 {
        cases.push((mid + 1, len(mid + 1) - k));
    }
    for (block, at) in cases {
        let bad = flip(blob, z.block_offset(block) + at);
        let bz = ZFile::open(mem(bad, name), true).expect("flips in blocks do not affect opening");
        for i in 0..n {
            let raw_len = bs.min(raw.len() as u64 - i * bs) as usize;
            let mut buf = vec![0u8; raw_len];
            let r = bz.read_at(&mut buf, i * bs);
            if i == block {
                assert_block_checksum(&expect_err(r, "read of the corrupt block"), name, block);
            } else {
                assert_eq!(r.expect("other blocks still read"), raw_len);
                assert!(buf == raw[(i * bs) as usize..(i * bs) as usize + raw_len], "block {i}");
            }
        }
        // A read spanning the corrupt block fails as well, and verify_all names it.
        let mut all = vec![0u8; raw.len()];
        assert_block_checksum(&expect_err(bz.read_at(&mut all, 0), "a read over all blocks"), name, block);
        assert_block_checksum(&expect_err(bz.verify_all(), "verify_all"), name, block);
    }
}

#[test]
fn block_flip_in_written_zfile_lz4() {
    let raw = sample_data(&mut StdRng::seed_from_u64(1), 20 * 4096 + 1000);
    check_block_flips(&zfile_of(&raw, Algorithm::Lz4, false), "written-lz4.zfile", &raw);
    check_block_flips(&zfile_of(&raw, Algorithm::Lz4, true), "written-lz4-overwritten.zfile", &raw);
}

#[test]
fn block_flip_in_written_zfile_zstd() {
    let raw = sample_data(&mut StdRng::seed_from_u64(2), 20 * 4096 + 1000);
    check_block_flips(&zfile_of(&raw, Algorithm::Zstd, false), "written-zstd.zfile", &raw);
}

/// The ZFile of the hello-world blob: (block offsets inside the blob, raw size).
fn hello_blocks(blob: &[u8], name: &str) -> (Vec<u64>, u64) {
    let u = unwrap(mem(blob.to_vec(), name), true).expect("unwrap hello-world");
    let p = u.tar.expect("tar-wrapped");
    assert_eq!((p.offset, p.size), (HELLO_PAYLOAD, HELLO_PAYLOAD_LEN));
    let z = u.zfile.expect("a ZFile");
    assert_eq!(z.blocks(), HELLO_BLOCKS);
    ((0..=z.blocks()).map(|i| p.offset + z.block_offset(i)).collect(), z.size())
}

#[test]
fn block_flip_in_hello_world() {
    let Some((blob, name)) = hello() else { return };
    let (offs, raw_size) = hello_blocks(&blob, &name);
    let intact = unwrap(mem(blob.clone(), &name), true).unwrap().zfile.unwrap();
    let last = HELLO_BLOCKS - 1;
    let mid = HELLO_BLOCKS / 2;
    // (block, byte in the stored block); the last cases hit the four CRC bytes of block 7.
    let len = |i: u64| offs[i as usize + 1] - offs[i as usize];
    let mut cases = vec![(0, 0), (0, len(0) / 2), (mid, 3), (last, len(last) - 5)];
    cases.extend((1..=4).map(|k| (7, len(7) - k)));
    for (block, at) in cases {
        let bad = flip(&blob, offs[block as usize] + at);
        let u = unwrap(mem(bad.clone(), &name), true).expect("a block flip does not affect unwrapping");
        let z = u.zfile.unwrap();
        let mut buf = vec![0u8; 4096];
        assert_block_checksum(&expect_err(z.read_at(&mut buf, block * 4096), "corrupt block"), &name, block);
        for other in [0, 1, mid - 1, mid + 1, last - 1, last] {
            if other == block {
                continue;
            }
            let mut want = vec![0u8; 4096];
            intact.read_at(&mut want, other * 4096).unwrap();
            z.read_at(&mut buf, other * 4096).expect("other blocks still read");
            assert!(buf == want, "block {other} after corrupting block {block}");
        }
        // Through the layer: block 0 holds the LSMT header, the last block its trailer, so the
        // layer does not open; a data block fails exactly the read that needs it.
        let r = open_mem(&bad, &name);
        if block == 0 || block == last {
            assert_block_checksum(&expect_err(r, "open with a corrupt header/trailer block"), &name, block);
        } else if block == mid {
            let layer = r.expect("a corrupt data block does not affect opening");
            let sector = block * 4096 / SECTOR;
            let seg = *layer
                .index()
                .segments()
                .iter()
                .find(|s| !s.zeroed && s.moffset <= sector && sector < s.mend())
                .expect("the middle block holds mapped data");
            let lba = seg.offset + (sector - seg.moffset);
            let mut sec = vec![0u8; 4096];
            assert_block_checksum(&expect_err(layer.read_at(&mut sec, lba * SECTOR), "layer read"), &name, block);
            // Sectors elsewhere still read.
            layer.read_at(&mut sec, 0).expect("other sectors still read");
        }
    }
    assert_eq!(raw_size, 71_528_448);
}

#[test]
fn block_flip_in_legacy_base_layer() {
    let Some(tgz) = reference("overlaybd-baselayer-ext4_64.tar.gz") else { return };
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: cannot extract {} with tar", tgz.display());
        return;
    }
    let path = dir.path().join("ext4_64");
    let name = path.display().to_string();
    let blob = std::fs::read(&path).unwrap();
    let z = ZFile::open(mem(blob.clone(), &name), true).expect("the legacy base layer opens");
    assert!(!z.header().has(zflags::DIGEST), "legacy file without digest");
    for block in [0, 1000, z.blocks() - 1] {
        let bad = flip(&blob, z.block_offset(block) + 2);
        let bz = ZFile::open(mem(bad.clone(), &name), true).unwrap();
        let mut buf = vec![0u8; 4096];
        assert_block_checksum(&expect_err(bz.read_at(&mut buf, block * 4096), "corrupt block"), &name, block);
        if block != 1000 {
            assert_block_checksum(&expect_err(open_mem(&bad, &name), "open"), &name, block);
        }
    }
    // Without a digest, a corrupt jump table entry shifts the blocks: the block CRCs catch it.
    let table = z.header().index_offset;
    let mut bad = blob.clone();
    let l0 = u32::from_le_bytes(bad[table as usize..table as usize + 4].try_into().unwrap());
    put_u32(&mut bad, table, l0 + 1);
    let l1 = u32::from_le_bytes(bad[table as usize + 4..table as usize + 8].try_into().unwrap());
    put_u32(&mut bad, table + 4, l1 - 1);
    let bz = ZFile::open(mem(bad, &name), true).expect("a shifted jump table entry still adds up");
    let mut buf = vec![0u8; 4096];
    assert_block_checksum(&expect_err(bz.read_at(&mut buf, 0), "shifted block 0"), &name, 0);
    assert_block_checksum(&expect_err(bz.read_at(&mut buf, 4096), "shifted block 1"), &name, 1);
}

// ---------------------------------------------------------------------------------------------
// Flipped bytes in the ZFile header, jump table and trailer

#[test]
fn zfile_header_flip_is_a_digest_mismatch() {
    let Some((blob, name)) = hello() else { return };
    // magic-free fields: size, digest, index fields, index CRC, block size, algo, verify, padding
    for at in [24, 29, 40, 48, 56, 64, 72, 76, 84, 88, 100, 300, 511] {
        let e = expect_err(open_mem(&flip(&blob, HELLO_PAYLOAD + at), &name), "header flip");
        assert_format(&e, &name, "header digest");
    }
}

#[test]
fn zfile_header_flag_bits() {
    let Some((blob, name)) = hello() else { return };
    let flags_at = HELLO_PAYLOAD + 32;
    // Clearing the header bit: no longer a ZFile, and nothing else matches either.
    let mut bad = blob.clone();
    bad[flags_at as usize] &= !(zflags::HEADER as u8);
    assert_format(&expect_err(open_mem(&bad, &name), "header bit cleared"), &name, "without the header flag");
    // Any other flag change breaks the digest.
    for bit in [zflags::DATA, zflags::SEALED, zflags::HEADER_OVERWRITE] {
        let mut bad = blob.clone();
        bad[flags_at as usize] ^= bit as u8;
        assert_format(&expect_err(open_mem(&bad, &name), "flag flipped"), &name, "header digest");
    }
}

#[test]
fn zfile_jump_table_flip_is_an_index_crc_mismatch() {
    let Some((blob, name)) = hello() else { return };
    let table = HELLO_PAYLOAD + HELLO_JUMP_TABLE;
    for at in [0, 1, 3, 4 * (HELLO_BLOCKS / 2) + 2, 4 * (HELLO_BLOCKS - 1) + 3] {
        let e = expect_err(open_mem(&flip(&blob, table + at), &name), "jump table flip");
        assert_format(&e, &name, "jump table CRC");
    }
}

#[test]
fn zfile_trailer_flip() {
    let raw = sample_data(&mut StdRng::seed_from_u64(3), 10 * 4096 + 7);
    let blob = zfile_of(&raw, Algorithm::Lz4, false);
    let name = "trailer.zfile";
    let t = blob.len() as u64 - 512;
    for (at, needle) in [
        (0, "bad magic in the trailer"),
        (20, "bad magic in the trailer"),
        (29, "trailer digest"),
        (41, "trailer digest"),
        (50, "trailer digest"),
        (60, "trailer digest"),
        (65, "trailer digest"),
        (200, "trailer digest"),
    ] {
        let e = expect_err(ZFile::open(mem(flip(&blob, t + at), name), true), "trailer flip");
        assert_format(&e, name, needle);
    }
    // Trailer flags that are not those of a sealed trailer.
    for bit in [zflags::HEADER, zflags::DATA, zflags::SEALED] {
        let mut bad = blob.clone();
        bad[(t + 32) as usize] ^= bit as u8;
        let e = expect_err(ZFile::open(mem(bad, name), true), "trailer flags");
        assert_format(&e, name, "trailer flags");
    }
}

#[test]
fn zfile_trailer_is_ignored_when_the_header_was_overwritten() {
    // hello-world's header has header_overwrite (0x1B): like the reference, the trailer is not
    // read, so flipping it changes nothing.
    let Some((blob, name)) = hello() else { return };
    let intact = open_mem(&blob, &name).unwrap();
    let t = HELLO_PAYLOAD + HELLO_PAYLOAD_LEN - 512;
    for at in [0, 32, 40, 100] {
        let layer = open_mem(&flip(&blob, t + at), &name).expect("trailer not read");
        assert_eq!(layer.index().segments(), intact.index().segments());
    }
}

// ---------------------------------------------------------------------------------------------
// Truncated files

#[test]
fn truncated_tar_blob() {
    let Some((blob, name)) = hello() else { return };
    let end = HELLO_PAYLOAD + HELLO_PAYLOAD_LEN;
    let table = HELLO_PAYLOAD + HELLO_JUMP_TABLE;
    let cuts = [
        0,
        1,
        100,
        511,
        512,
        600,
        1023,
        1024,
        1300,
        1535,
        1536,
        1536 + 100,
        1536 + 511,
        1536 + 512,
        1536 + 5000,
        1536 + 300_000,
        table - 1,
        table,
        table + 1000,
        table + 4 * HELLO_BLOCKS - 1,
        table + 4 * HELLO_BLOCKS,
        table + 4 * HELLO_BLOCKS + 100,
        end - 1,
    ];
    for cut in cuts {
        let e = expect_err(open_mem(&blob[..cut as usize], &name), &format!("cut at {cut}"));
        if cut < 512 {
            // Not even one whole tar header.
            assert_truncated_or_format(&e, &name);
        } else {
            assert_truncated(&e, &name);
        }
    }
    // Cuts in the tar padding and end-of-archive blocks lose nothing of the payload.
    let intact = open_mem(&blob, &name).unwrap();
    for cut in [end, end + 1, end + 512, blob.len() as u64 - 1] {
        let layer = open_mem(&blob[..cut as usize], &name).expect("payload intact");
        assert_eq!(layer.index().segments(), intact.index().segments());
    }
}

#[test]
fn truncated_bare_zfile() {
    let Some((blob, name)) = hello() else { return };
    let hello_payload = blob[HELLO_PAYLOAD as usize..(HELLO_PAYLOAD + HELLO_PAYLOAD_LEN) as usize].to_vec();
    let (lsmt, _) = small_committed(7);
    for (zfile, name) in [
        (hello_payload, name.as_str()),
        (zfile_of(&lsmt, Algorithm::Lz4, false), "small-lz4.zfile"),
        (zfile_of(&lsmt, Algorithm::Zstd, true), "small-zstd.zfile"),
    ] {
        let z = ZFile::open(mem(zfile.clone(), name), true).unwrap();
        let table = z.header().index_offset;
        let trailer = table + 4 * z.blocks();
        let len = zfile.len() as u64;
        assert_eq!(trailer + 512, len);
        let mut cuts = vec![0, 1, 24, 100, 511, 512, 513, 1000, table / 2, table - 1, table, table + 1];
        cuts.extend([trailer - 1, trailer, trailer + 1, trailer + 100, len - 1]);
        for cut in cuts {
            let e = expect_err(open_mem(&zfile[..cut as usize], name), &format!("{name} cut at {cut}"));
            assert_truncated_or_format(&e, name);
        }
    }
}

#[test]
fn truncated_committed_lsmt() {
    let (lsmt, _) = small_committed(8);
    let name = "small.lsmt";
    let t = lsmt_trailer(&lsmt);
    let len = lsmt.len() as u64;
    let io = t.index_offset;
    let mut cuts = vec![0, 1, 100, 389, 390, 4095, 4096, 4097, (4096 + io) / 2, io - 1, io, io + 1, io + 16 * 100];
    cuts.extend([len - 4096 - 1, len - 4096, len - 4096 + 1, len - 2048, len - 1]);
    for cut in cuts {
        let e = expect_err(open_mem(&lsmt[..cut as usize], name), &format!("cut at {cut}"));
        assert_truncated_or_format(&e, name);
    }
    // The same cuts inside a ZFile (the raw view is intact, the LSMT in it is short).
    for cut in [4096, io, io + 1, len - 4096, len - 1] {
        let z = zfile_of(&lsmt[..cut as usize], Algorithm::Lz4, false);
        let e = expect_err(open_mem(&z, name), &format!("cut at {cut} in a ZFile"));
        assert_truncated_or_format(&e, name);
    }
}

// ---------------------------------------------------------------------------------------------
// Wrong magic, zeros, empty files

#[test]
fn wrong_tar_magic() {
    let Some((blob, name)) = hello() else { return };
    // In the first header the file is no longer a tar, and nothing else either.
    let e = expect_err(open_mem(&flip(&blob, 257), &name), "first tar header");
    assert_format(&e, &name, "tar");
    // In the second header (the ustar entry after the PAX header).
    let e = expect_err(open_mem(&flip(&blob, 1024 + 257), &name), "second tar header");
    assert_format(&e, &name, "bad tar header at 1024");
    // A wrong checksum in the first header.
    let e = expect_err(open_mem(&flip(&blob, 150), &name), "tar checksum");
    assert_format(&e, &name, "the tar header at 0 has a bad checksum");
}

#[test]
fn wrong_zfile_magic() {
    let Some((blob, name)) = hello() else { return };
    for at in [0, 5, 10, 23] {
        let e = expect_err(open_mem(&flip(&blob, HELLO_PAYLOAD + at), &name), "ZFile magic");
        assert_format(&e, &name, "the tar payload has no ZFile or LSMT magic");
    }
}

#[test]
fn wrong_lsmt_magic() {
    let (lsmt, _) = small_committed(9);
    let name = "magic.lsmt";
    let len = lsmt.len() as u64;
    for (at, needle) in [(0, "LSMT magic"), (12, "LSMT magic"), (len - 4096, "no trailer")] {
        let bad = flip(&lsmt, at);
        assert_format(&expect_err(open_mem(&bad, name), "bare"), name, needle);
        let z = zfile_of(&bad, Algorithm::Zstd, true);
        assert_format(&expect_err(open_mem(&z, name), "in a ZFile"), name, needle);
        let t = tar_of(&zfile_of(&bad, Algorithm::Lz4, false));
        assert_format(&expect_err(open_mem(&t, name), "in tar(ZFile)"), name, needle);
        assert_format(&expect_err(open_mem(&tar_of(&bad), name), "in a tar"), name, needle);
    }
}

#[test]
fn zeros_and_empty_files() {
    for len in [0usize, 1, 511, 512, 4096, 8192, 64 << 10] {
        let name = format!("zeros-{len}");
        let e = expect_err(open_mem(&vec![0u8; len], &name), &name);
        assert_format(&e, &name, if len < 24 { "too small" } else { "no tar, ZFile or LSMT magic" });
    }
    // A real empty file.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.layer");
    std::fs::write(&p, b"").unwrap();
    let e = expect_err(backstore::detect::open_layer_file(&p), "empty file");
    assert_format(&e, &p.display().to_string(), "0 bytes");
}

// ---------------------------------------------------------------------------------------------
// Absurd sizes: fail fast, no huge allocation

#[test]
fn lsmt_trailer_absurd_index() {
    let (lsmt, _) = small_committed(10);
    let name = "absurd.lsmt";
    let t = lsmt.len() as u64 - 4096;
    let io = lsmt_trailer(&lsmt).index_offset;
    for n in [1u64 << 40, u64::MAX, u64::MAX / 16 + 1, 1 << 60, 1_000_000] {
        let mut bad = lsmt.clone();
        put_u64(&mut bad, t + 40, n);
        assert_format(&expect_err(open_mem(&bad, name), "index_size"), name, "does not fit");
        let z = zfile_of(&bad, Algorithm::Lz4, true);
        assert_format(&expect_err(open_mem(&z, name), "index_size in a ZFile"), name, "does not fit");
    }
    for (off, needle) in [
        (u64::MAX, "outside the data area"),
        (lsmt.len() as u64 * 2, "outside the data area"),
        (t + 512, "outside the data area"),
        (0, "outside the data area"),
        (512, "outside the data area"),
        (io + 1, "unaligned"),
        (t, "does not fit"),
    ] {
        let mut bad = lsmt.clone();
        put_u64(&mut bad, t + 32, off);
        assert_format(&expect_err(open_mem(&bad, name), "index_offset"), name, needle);
    }
}

#[test]
fn lsmt_index_larger_than_the_reference_accepts() {
    // A committed file whose index (all padding) has more entries than readers accept
    // (reference check 3 of spec §3.5). Refused before the index is read.
    let n = backstore::lsmt::MAX_COMMITTED_ENTRIES + 256;
    let h = LsmtHeader::new(0x07, SMALL_VSIZE, LayerUuid::NIL, LayerUuid::NIL);
    let mut f = h.encode();
    for _ in 0..n {
        f.extend_from_slice(&Segment::PADDING.encode());
    }
    let mut t = h.clone();
    t.flags = 0x06;
    t.index_offset = 4096;
    t.index_size = n;
    f.extend(t.encode());
    let name = "huge-index.lsmt";
    let e = expect_err(open_mem(&f, name), "too many entries");
    assert_format(&e, name, "limit");
}

/// A written ZFile whose header carries the index fields (0x1B), and a way to re-encode it.
fn overwritten_zfile() -> (Vec<u8>, ZFileHeader, Vec<u8>) {
    let raw = sample_data(&mut StdRng::seed_from_u64(11), 12 * 4096 + 1000);
    let z = zfile_of(&raw, Algorithm::Lz4, true);
    let h = ZFileHeader::decode(&z).unwrap();
    assert!(h.has(zflags::HEADER_OVERWRITE) && h.has(zflags::DIGEST));
    (z, h, raw)
}

fn with_header(z: &[u8], h: &ZFileHeader) -> Vec<u8> {
    let mut out = z.to_vec();
    out[..512].copy_from_slice(&h.encode());
    out
}

#[test]
fn zfile_absurd_header_fields() {
    let (z, h, _) = overwritten_zfile();
    let name = "absurd.zfile";
    let size = z.len() as u64;
    let mut cases: Vec<(ZFileHeader, &str)> = Vec::new();
    for n in [1u64 << 40, u64::MAX, 1_000_000_001] {
        cases.push((ZFileHeader { index_size: n, ..h.clone() }, "exceeds the limit"));
    }
    for n in [0, h.index_size - 1] {
        cases.push((ZFileHeader { index_size: n, ..h.clone() }, "blocks cannot hold"));
    }
    for n in [h.index_size + 1, 1_000_000_000] {
        cases.push((ZFileHeader { index_size: n, ..h.clone() }, "does not fit"));
    }
    for s in [u64::MAX, 1 << 62, 0, h.original_file_size + 4096, h.original_file_size - 4096] {
        cases.push((ZFileHeader { original_file_size: s, ..h.clone() }, "blocks cannot hold"));
    }
    for bs in [0, 1, 3, 2048, 4097, 131_072, 1 << 31, u32::MAX] {
        cases.push((ZFileHeader { block_size: bs, ..h.clone() }, "block size"));
    }
    cases.push((ZFileHeader { block_size: 8192, ..h.clone() }, "blocks cannot hold"));
    for io in [u64::MAX, size, size - 511, 1 << 40] {
        cases.push((ZFileHeader { index_offset: io, ..h.clone() }, "does not fit"));
    }
    cases.push((ZFileHeader { index_offset: 0, ..h.clone() }, "jump table CRC"));
    cases.push((ZFileHeader { index_crc: h.index_crc ^ 1, ..h.clone() }, "jump table CRC"));
    for d in [1, 4096, u32::MAX] {
        cases.push((ZFileHeader { dict_size: d, ..h.clone() }, "past the jump table"));
    }
    for a in [0, 3, 255] {
        cases.push((ZFileHeader { algo: a, ..h.clone() }, "algorithm"));
    }
    for (bad, needle) in cases {
        let e = expect_err(ZFile::open(mem(with_header(&z, &bad), name), true), needle);
        assert_format(&e, name, needle);
    }
}

#[test]
fn zfile_raw_size_inconsistent_with_the_last_block() {
    // One byte more (or less) in the last block: the header is self-consistent, but the last
    // block does not decompress to that size.
    let (z, h, raw) = overwritten_zfile();
    let name = "lastblock.zfile";
    for s in [h.original_file_size + 1, h.original_file_size - 1] {
        let bz = ZFile::open(mem(with_header(&z, &ZFileHeader { original_file_size: s, ..h.clone() }), name), true)
            .expect("consistent header");
        let last = bz.blocks() - 1;
        let mut buf = vec![0u8; s as usize];
        let e = expect_err(bz.read_at(&mut buf, 0), "read over the last block");
        let msg = names(&e, name);
        assert!(matches!(e, Error::Decompress { block, .. } if block == last), "{e:?}");
        assert!(msg.contains(&format!("block {last} ")), "{msg}");
        // The other blocks are fine.
        bz.read_at(&mut buf[..(last * 4096) as usize], 0).expect("blocks before the last");
        assert!(buf[..(last * 4096) as usize] == raw[..(last * 4096) as usize]);
    }
}

#[test]
fn zfile_absurd_jump_table_lengths() {
    let (z, h, _) = overwritten_zfile();
    let name = "lengths.zfile";
    let table = h.index_offset;
    let entry = |d: &[u8], i: u64| u32::from_le_bytes(d[(table + 4 * i) as usize..][..4].try_into().unwrap());
    let resealed = |d: Vec<u8>| {
        let crc = raw_crc32c(&d[table as usize..(table + 4 * h.index_size) as usize], SEED_HEADER);
        with_header(&d, &ZFileHeader { index_crc: crc, ..h.clone() })
    };
    for block in [0, 5, h.index_size - 1] {
        for len in [0u32, 1, 4, 0x7FFF_FFFF, 0xFFFF_FFFF, 70_000] {
            let mut d = z.clone();
            put_u32(&mut d, table + 4 * block, len);
            let e = expect_err(ZFile::open(mem(resealed(d), name), true), "length");
            assert_format(&e, name, &format!("block {block} has an impossible stored length {len}"));
        }
    }
    // Lengths that add up past the jump table.
    let mut d = z.clone();
    put_u32(&mut d, table + 8, entry(&z, 2) + 100);
    assert_format(&expect_err(ZFile::open(mem(resealed(d), name), true), "sum"), name, "past the jump table");
    // Lengths shifted between two blocks (sum unchanged, index CRC fixed): both blocks fail
    // their CRC, the others read.
    let mut d = z.clone();
    put_u32(&mut d, table + 12, entry(&z, 3) + 7);
    put_u32(&mut d, table + 16, entry(&z, 4) - 7);
    let bz = ZFile::open(mem(resealed(d), name), true).expect("a consistent table");
    let mut buf = vec![0u8; 4096];
    for block in [3, 4] {
        assert_block_checksum(&expect_err(bz.read_at(&mut buf, block * 4096), "shifted"), name, block);
    }
    bz.read_at(&mut buf, 5 * 4096).expect("block 5 is intact");
}

// ---------------------------------------------------------------------------------------------
// LSMT index entries: unsorted, overlapping, outside the data area

/// A committed layer with several separate data entries and a zeroed one.
fn layer_with_entries() -> (Vec<u8>, Vec<Segment>) {
    let dir = tempfile::tempdir().unwrap();
    let (dp, ip) = (dir.path().join("data"), dir.path().join("index"));
    let opts =
        CreateOptions { virtual_size: 1 << 20, uuid: LayerUuid::NIL, parent_uuid: LayerUuid::NIL, sparse: false };
    WritableLayer::create(&dp, &ip, &opts).unwrap();
    let layer = WritableLayer::open(&dp, &ip, true, Recovery::Strict).unwrap();
    for (lba, n, b) in [(0u64, 8u64, 1u8), (100, 4, 2), (200, 16, 3), (400, 2, 4)] {
        layer.write_at(&vec![b; (n * SECTOR) as usize], lba * SECTOR).unwrap();
    }
    layer.discard(300 * SECTOR, 8 * SECTOR).unwrap();
    let mut out = Vec::new();
    let commit = CommitOptions { virtual_size: 1 << 20, ..CommitOptions::default() };
    write_committed(&layer.segments(), |s, b| layer.read_segment(s, b), &commit, &mut out).unwrap();
    let segs = CommittedLayer::open(mem(out.clone(), "x")).unwrap().index().segments().to_vec();
    assert_eq!(segs.len(), 5);
    (out, segs)
}

#[test]
fn lsmt_bad_index_entries() {
    let (lsmt, segs) = layer_with_entries();
    let io = lsmt_trailer(&lsmt).index_offset;
    let data_end = io / SECTOR;
    let set = |d: &mut Vec<u8>, i: u64, s: Segment| {
        d[(io + 16 * i) as usize..(io + 16 * i + 16) as usize].copy_from_slice(&s.encode())
    };
    let z = segs.iter().position(|s| s.zeroed).unwrap() as u64;
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    // Unsorted: entries 1 and 2 swapped.
    let mut d = lsmt.clone();
    set(&mut d, 1, segs[2]);
    set(&mut d, 2, segs[1]);
    cases.push((d, "unsorted or overlap"));
    // Overlapping: entry 1 starts inside entry 0.
    let mut d = lsmt.clone();
    set(&mut d, 1, Segment { offset: segs[0].end() - 1, ..segs[1] });
    cases.push((d, "unsorted or overlap"));
    // Duplicated entry.
    let mut d = lsmt.clone();
    set(&mut d, 1, segs[0]);
    cases.push((d, "unsorted or overlap"));
    // A non-padding entry of length 0.
    let mut d = lsmt.clone();
    set(&mut d, 1, Segment { length: 0, ..segs[1] });
    cases.push((d, "length 0"));
    // Data beyond the data area, in the header, past the file.
    for mo in [data_end - 1, data_end, data_end + 1000, 0, 7, (1 << 55) - 1] {
        let mut d = lsmt.clone();
        set(&mut d, 0, Segment { moffset: mo, ..segs[0] });
        cases.push((d, "outside the data area"));
    }
    // Zeroed entry pointing beyond the data area or into the header.
    for mo in [data_end + 1, 3, (1 << 55) - 1] {
        let mut d = lsmt.clone();
        set(&mut d, z, Segment { moffset: mo, ..segs[z as usize] });
        cases.push((d, "outside the data area"));
    }
    let name = "entries.lsmt";
    for (bad, needle) in cases {
        assert_format(&expect_err(open_mem(&bad, name), needle), name, needle);
        let zf = zfile_of(&bad, Algorithm::Lz4, true);
        assert_format(&expect_err(open_mem(&zf, name), needle), name, needle);
    }
    // A zeroed entry at exactly the end of the data area is legal.
    let mut d = lsmt.clone();
    set(&mut d, z, Segment { moffset: data_end, ..segs[z as usize] });
    open_mem(&d, name).expect("zeroed entry at the data end");
}

// ---------------------------------------------------------------------------------------------
// Writable layers

struct Pair {
    _dir: tempfile::TempDir,
    data: PathBuf,
    index: PathBuf,
}

fn new_pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (data, index) = (dir.path().join("layer.data"), dir.path().join("layer.index"));
    let opts =
        CreateOptions { virtual_size: 1 << 20, uuid: LayerUuid::NIL, parent_uuid: LayerUuid::NIL, sparse: false };
    WritableLayer::create(&data, &index, &opts).unwrap();
    Pair { _dir: dir, data, index }
}

fn read_lba(l: &WritableLayer, lba: u64, n: u64) -> Vec<u8> {
    let mut pieces = Vec::new();
    l.pieces(lba, lba + n, &mut pieces);
    let mut out = vec![0u8; (n * SECTOR) as usize];
    for p in pieces {
        if let backstore::lsmt::index::Piece::Mapped(s) = p {
            let at = ((s.offset - lba) * SECTOR) as usize;
            l.read_segment(&s, &mut out[at..at + (s.length as u64 * SECTOR) as usize]).unwrap();
        }
    }
    out
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn sectors(b: u8, n: u64) -> Vec<u8> {
    vec![b; (n * SECTOR) as usize]
}

#[test]
fn writable_data_file_cut_short() {
    let p = new_pair();
    {
        let l = WritableLayer::open(&p.data, &p.index, true, Recovery::Strict).unwrap();
        l.write_at(&sectors(0xA1, 8), 0).unwrap(); // entry 0: data 4096..8192
        l.write_at(&sectors(0xB2, 8), 0).unwrap(); // entry 1: data 8192..12288, overwrites
        l.write_at(&sectors(0xC3, 4), 64 * SECTOR).unwrap(); // entry 2: data 12288..14336
        l.flush().unwrap();
    }
    let index_len = file_len(&p.index);
    assert_eq!(index_len, 4096 + 3 * 16);
    // A crash lost the tail of the data file: entries 1 and 2 point past its end.
    std::fs::OpenOptions::new().write(true).open(&p.data).unwrap().set_len(8192 + 1000).unwrap();

    let e = expect_err(WritableLayer::open(&p.data, &p.index, false, Recovery::Strict), "strict");
    let msg = names(&e, &p.index.display().to_string());
    names(&e, &p.data.display().to_string());
    assert!(matches!(e, Error::DataFileCutShort { entry: 1, start: 16, end: 24, have: 17, .. }), "{e:?}");
    assert!(msg.contains("entry 1"), "{msg}");

    // Read-only roll-back: opens, the older data shows, the log file is left alone.
    let l = WritableLayer::open(&p.data, &p.index, false, Recovery::RollBack).expect("roll back");
    assert_eq!(l.log_entries(), 1);
    assert!(read_lba(&l, 0, 8) == sectors(0xA1, 8));
    assert!(read_lba(&l, 64, 4) == sectors(0, 4));
    drop(l);
    assert_eq!(file_len(&p.index), index_len);

    // Writable roll-back truncates the log; the next write lands after the data file's end
    // and survives a strict reopen.
    let l = WritableLayer::open(&p.data, &p.index, true, Recovery::RollBack).expect("roll back");
    assert_eq!(file_len(&p.index), 4096 + 16);
    assert!(read_lba(&l, 0, 8) == sectors(0xA1, 8));
    l.write_at(&sectors(0xD4, 2), 2 * SECTOR).unwrap();
    l.flush().unwrap();
    drop(l);
    let l = WritableLayer::open(&p.data, &p.index, false, Recovery::Strict).expect("consistent again");
    assert_eq!(l.log_entries(), 2);
    let mut want = sectors(0xA1, 8);
    want[1024..2048].fill(0xD4);
    assert!(read_lba(&l, 0, 8) == want);
}

#[test]
fn writable_torn_last_index_entry() {
    let p = new_pair();
    {
        let l = WritableLayer::open(&p.data, &p.index, true, Recovery::Strict).unwrap();
        l.write_at(&sectors(0x11, 4), 0).unwrap();
        l.write_at(&sectors(0x22, 4), 8 * SECTOR).unwrap();
    }
    for torn in [1usize, 7, 15] {
        let mut idx = std::fs::read(&p.index).unwrap();
        let whole = idx.len();
        idx.extend(std::iter::repeat_n(0xEE, torn));
        std::fs::write(&p.index, &idx).unwrap();
        // Read-only: the torn bytes are ignored and left in place.
        let l = WritableLayer::open(&p.data, &p.index, false, Recovery::Strict).expect("torn entry ignored");
        assert!(read_lba(&l, 0, 4) == sectors(0x11, 4) && read_lba(&l, 8, 4) == sectors(0x22, 4));
        drop(l);
        assert_eq!(file_len(&p.index), (whole + torn) as u64);
        // Writable: the log is cut back to whole entries and the next entry lands right.
        let l = WritableLayer::open(&p.data, &p.index, true, Recovery::Strict).unwrap();
        assert_eq!(file_len(&p.index), whole as u64);
        let entries = l.log_entries();
        l.write_at(&sectors(0x33 + torn as u8, 2), 4 * SECTOR).unwrap();
        l.flush().unwrap();
        drop(l);
        let l = WritableLayer::open(&p.data, &p.index, false, Recovery::Strict).expect("reopen");
        assert_eq!(l.log_entries(), entries + 1);
        assert_eq!(file_len(&p.index), whole as u64 + 16);
        assert!(read_lba(&l, 4, 2) == sectors(0x33 + torn as u8, 2));
        assert!(read_lba(&l, 0, 4) == sectors(0x11, 4));
    }
}

#[test]
fn writable_wrong_index_header() {
    let p = new_pair();
    let iname = p.index.display().to_string();
    let good = std::fs::read(&p.index).unwrap();
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    cases.push((flip(&good, 0), "bad magic"));
    cases.push((flip(&good, 20), "bad magic"));
    cases.push((vec![0u8; 4096], "bad magic"));
    for f in [0x03u32, 0x00, 0x05, 0x07] {
        let mut d = good.clone();
        put_u32(&mut d, 28, f);
        cases.push((d, "index file header"));
    }
    for off in [0u64, 512, 8192, u64::MAX] {
        let mut d = good.clone();
        put_u64(&mut d, 32, off);
        cases.push((d, "index file header"));
    }
    for (bad, needle) in cases {
        std::fs::write(&p.index, &bad).unwrap();
        for (writable, recovery) in [(false, Recovery::Strict), (true, Recovery::RollBack)] {
            let e = expect_err(WritableLayer::open(&p.data, &p.index, writable, recovery), needle);
            assert_format(&e, &iname, needle);
        }
    }
    // An empty or cut header.
    for len in [0usize, 100, 389, 390, 4095] {
        std::fs::write(&p.index, &good[..len]).unwrap();
        let e = expect_err(WritableLayer::open(&p.data, &p.index, true, Recovery::RollBack), "cut header");
        assert_truncated(&e, &iname);
    }
    // The data file's header, likewise.
    std::fs::write(&p.index, &good).unwrap();
    let dname = p.data.display().to_string();
    let data = std::fs::read(&p.data).unwrap();
    std::fs::write(&p.data, flip(&data, 3)).unwrap();
    let e = expect_err(WritableLayer::open(&p.data, &p.index, false, Recovery::Strict), "data magic");
    assert_format(&e, &dname, "bad magic");
    for len in [0usize, 100, 390, 4095] {
        std::fs::write(&p.data, &data[..len]).unwrap();
        let e = expect_err(WritableLayer::open(&p.data, &p.index, true, Recovery::RollBack), "cut data header");
        assert_truncated(&e, &dname);
    }
}

#[test]
fn writable_entry_pointing_into_the_header() {
    let p = new_pair();
    {
        let l = WritableLayer::open(&p.data, &p.index, true, Recovery::Strict).unwrap();
        l.write_at(&sectors(0x11, 4), 0).unwrap();
    }
    let mut idx = std::fs::read(&p.index).unwrap();
    idx.extend_from_slice(&Segment::data(10, 4, 2).encode());
    std::fs::write(&p.index, &idx).unwrap();
    let iname = p.index.display().to_string();
    for recovery in [Recovery::Strict, Recovery::RollBack] {
        let e = expect_err(WritableLayer::open(&p.data, &p.index, false, recovery), "entry in the header");
        assert_format(&e, &iname, "entry 1");
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded mutation loop over the fuzz bodies

/// Flips, overwrites, truncates or extends `blob` at random; mutations prefer the structural
/// parts (`hot` byte ranges) half of the time.
fn mutate(rng: &mut StdRng, blob: &[u8], hot: &[(u64, u64)]) -> Vec<u8> {
    let mut d = blob.to_vec();
    let rounds = if rng.gen_bool(0.7) { 1 } else { rng.gen_range(2..5) };
    for _ in 0..rounds {
        if d.is_empty() {
            break;
        }
        let pos = if rng.gen_bool(0.5) && !hot.is_empty() {
            let (s, e) = hot[rng.gen_range(0..hot.len())];
            rng.gen_range(s..e.max(s + 1)).min(d.len() as u64 - 1)
        } else {
            rng.gen_range(0..d.len() as u64)
        } as usize;
        match rng.gen_range(0..10) {
            0..=3 => d[pos] ^= 1 << rng.gen_range(0..8),
            4..=5 => d[pos] = rng.gen(),
            6 => {
                let v: [u8; 8] = match rng.gen_range(0..4) {
                    0 => [0; 8],
                    1 => [0xFF; 8],
                    2 => (1u64 << 40).to_le_bytes(),
                    _ => (rng.gen::<u32>() as u64).to_le_bytes(),
                };
                let n = rng.gen_range(1..=8).min(d.len() - pos);
                d[pos..pos + n].copy_from_slice(&v[..n]);
            }
            7..=8 => d.truncate(pos),
            _ => {
                let n = rng.gen_range(1..600);
                d.extend((0..n).map(|_| rng.gen::<u8>()));
            }
        }
    }
    d
}

struct Subject {
    name: &'static str,
    blob: Vec<u8>,
    /// Block CRCs and digests protect everything: an `Ok` must give the original contents.
    protected: bool,
    hot: Vec<(u64, u64)>,
}

fn zfile_hot(z: &[u8], base: u64) -> Vec<(u64, u64)> {
    let len = z.len() as u64;
    let h = ZFile::open(mem(z.to_vec(), "hot"), true).unwrap();
    let io = h.header().index_offset;
    vec![(base, base + 96), (base + io, base + len - 512), (base + len - 512, base + len - 416)]
}

fn subjects() -> Vec<Subject> {
    let (lsmt, _) = small_committed(42);
    let t = lsmt_trailer(&lsmt);
    let len = lsmt.len() as u64;
    let lsmt_hot = vec![(0, 390), (t.index_offset, t.index_offset + 16 * 16), (len - 4096, len - 4096 + 390)];
    let z_lz4 = zfile_of(&lsmt, Algorithm::Lz4, false);
    let z_zstd = zfile_of(&lsmt, Algorithm::Zstd, true);
    let tz = tar_of(&z_lz4);
    let tl = tar_of(&lsmt);
    let mut tz_hot = vec![(0, 1536)];
    tz_hot.extend(zfile_hot(&z_lz4, 1536));
    let mut tl_hot = vec![(0, 1536)];
    tl_hot.extend(lsmt_hot.iter().map(|&(s, e)| (s + 1536, e + 1536)));
    vec![
        Subject { name: "lsmt", blob: lsmt.clone(), protected: false, hot: lsmt_hot },
        Subject { name: "zfile-lz4", hot: zfile_hot(&z_lz4, 0), blob: z_lz4, protected: true },
        Subject { name: "zfile-zstd", hot: zfile_hot(&z_zstd, 0), blob: z_zstd, protected: true },
        Subject { name: "tar-zfile", blob: tz, protected: true, hot: tz_hot },
        Subject { name: "tar-lsmt", blob: tl, protected: false, hot: tl_hot },
    ]
}

/// True if the mutant still has a ZFile with block CRCs whose header and jump table are
/// covered by digests, i.e. every changed byte that is used must be detected.
fn still_protected(d: &[u8]) -> bool {
    match unwrap(mem(d.to_vec(), "m"), true) {
        Ok(u) => u.zfile.is_some_and(|z| z.has_checksums() && z.header().has(zflags::DIGEST)),
        Err(_) => false,
    }
}

#[test]
fn mutation_loop_open_layer() {
    let mut rng = StdRng::seed_from_u64(0x0BDF_0022);
    let subjects = subjects();
    let mut originals: Vec<Contents> = Vec::new();
    for s in &subjects {
        let c = open_layer_body(&s.blob).unwrap_or_else(|e| panic!("{}: the intact blob: {e}", s.name));
        assert!(c.full.is_some() && !c.mapped.is_empty());
        originals.push(c);
    }
    let (_, image) = small_committed(42);
    assert!(originals[0].full.as_deref() == Some(&image[..]), "the layer reads what was written");
    let (mut ok, mut err) = (0u32, 0u32);
    for iter in 0..3000u32 {
        let k = iter as usize % subjects.len();
        let s = &subjects[k];
        let m = mutate(&mut rng, &s.blob, &s.hot);
        match open_layer_body(&m) {
            Ok(c) => {
                ok += 1;
                if s.protected && still_protected(&m) {
                    assert!(
                        c == originals[k],
                        "{} iteration {iter}: a CRC-protected mutant read different data",
                        s.name
                    );
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().contains("fuzz"), "the message does not name the file: {e}");
            }
        }
    }
    eprintln!("mutation loop: {ok} opened, {err} refused");
    assert!(err > 1000, "most mutants must be refused ({err})");
}

#[test]
fn mutation_loop_writable_index() {
    let mut rng = StdRng::seed_from_u64(0x1_DEC5);
    let dir = tempfile::tempdir().unwrap();
    let entries = [
        Segment::data(0, 8, 8),
        Segment::data(4, 8, 16),
        Segment::zeroed(2, 3, 24),
        Segment::data(100, 40, 24),
        Segment::PADDING,
        Segment::data(20, 16, 56),
    ];
    let mut log = Vec::new();
    for s in entries {
        log.extend_from_slice(&s.encode());
    }
    let with_header = [fuzz_bodies::fuzz_index_header(), log.clone()].concat();
    // mode byte: bit 0 = prepend the header, bit 1 = roll back, bit 2 = writable, rest = LBA.
    for mode in 0..8u8 {
        let input = if mode & 1 != 0 { [&[mode][..], &log].concat() } else { [&[mode][..], &with_header].concat() };
        writable_index_body(&input, dir.path()).unwrap_or_else(|e| panic!("mode {mode}: the intact log: {e}"));
    }
    let hot = [(1u64, 1 + 16 * entries.len() as u64)];
    let hot_header = [(1u64, 391), (4097, 4097 + 16 * entries.len() as u64)];
    let (mut ok, mut err) = (0u32, 0u32);
    for iter in 0..1500u32 {
        let mode: u8 = rng.gen();
        let base = if mode & 1 != 0 { [&[mode][..], &log].concat() } else { [&[mode][..], &with_header].concat() };
        let mut m = mutate(&mut rng, &base, if mode & 1 != 0 { &hot } else { &hot_header });
        if !m.is_empty() {
            m[0] = mode;
        }
        match writable_index_body(&m, dir.path()) {
            Ok(_) => ok += 1,
            Err(e) => {
                err += 1;
                let msg = e.to_string();
                assert!(msg.contains(&*dir.path().to_string_lossy()), "iteration {iter}: no file named: {msg}");
            }
        }
    }
    eprintln!("writable mutation loop: {ok} opened, {err} refused");
    assert!(ok > 100 && err > 100, "{ok} opened, {err} refused");
}

/// Writes seed inputs for the fuzz targets to `backstore/fuzz/corpus/` (run with `--ignored`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let ol = root.join("open_layer");
    std::fs::create_dir_all(&ol).unwrap();
    for s in subjects() {
        std::fs::write(ol.join(s.name), &s.blob).unwrap();
    }
    let wi = root.join("writable_index");
    std::fs::create_dir_all(&wi).unwrap();
    let log: Vec<u8> =
        [Segment::data(0, 8, 8), Segment::data(4, 8, 16), Segment::zeroed(2, 3, 24), Segment::data(100, 40, 24)]
            .iter()
            .flat_map(|s| s.encode())
            .collect();
    for mode in [1u8, 3, 5, 7] {
        std::fs::write(wi.join(format!("log-{mode}")), [&[mode][..], &log].concat()).unwrap();
    }
    std::fs::write(wi.join("full-6"), [&[6u8][..], &fuzz_bodies::fuzz_index_header(), &log].concat()).unwrap();
}
