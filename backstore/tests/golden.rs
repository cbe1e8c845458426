//! Golden tests on the real blobs made by the reference implementation: every figure listed in
//! the test data's README is asserted here.

mod common;

use std::fs::File;
use std::process::Command;
use std::sync::Arc;

use backstore::crc::{raw_crc32c, SEED_BLOCK};
use backstore::detect::{open_layer_file, unwrap};
use backstore::io::{LocalFile, ReadAt};
use backstore::lsmt::{write_committed, CommitOptions, Segment};
use backstore::tar;
use backstore::tools::dump::{for_each_chunk, image_sha256};
use backstore::uuid::LayerUuid;
use backstore::zfile::{Algorithm, ZFileHeader};
use backstore::{BlockDevice, Stack};
use common::*;

const HELLO: &str = "hello-world-amd64-overlaybd-layer.tar";

fn read(src: &dyn ReadAt, off: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    src.read_exact_at(&mut b, off, "test").unwrap();
    b
}

#[test]
fn hello_world_tar_wrapper() {
    let path = reference(HELLO);
    assert_eq!(sha256_file(&path), "022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d");
    let src = LocalFile::open(&path).unwrap();
    assert_eq!(src.size(), 642_560);
    let p = tar::detect(&src).unwrap().expect("a tar");
    assert_eq!((p.offset, p.size, p.pax), (1536, 639_491, true));
    let head = read(&src, 0, 1536);
    assert_eq!(&head[..13], b"overlaybd.pax");
    assert_eq!(head[156], b'x');
    assert_eq!(&head[512..512 + 15], b"15 size=639491\n");
    assert_eq!(&head[1024..1024 + 16], b"overlaybd.commit");
    assert_eq!(&head[1024 + 124..1024 + 136], b"          0 ", "ustar size field is 0");
    // Our writer produces the very same 1536 header bytes for the same payload and mode.
    assert_eq!(tar::headers(639_491, 0o100644), head);
    // payload padded to 641536, then two zero blocks to 642560
    assert_eq!(read(&src, 1536 + 639_491, 642_560 - 1536 - 639_491), vec![0u8; 642_560 - 1536 - 639_491]);
}

#[test]
fn hello_world_zfile() {
    let src: Arc<dyn ReadAt> = Arc::new(LocalFile::open(reference(HELLO)).unwrap());
    let u = unwrap(src.clone(), true).unwrap();
    let z = u.zfile.expect("a ZFile");
    let raw = read(src.as_ref(), 1536, 512);
    let h = ZFileHeader::decode(&raw).unwrap();
    assert_eq!(h.flags, 0x1B);
    assert_eq!(h.digest, 0x0F1F_3445);
    assert_eq!(ZFileHeader::digest_of(&raw), 0x0F1F_3445);
    // Our encoder reproduces the reference header byte for byte.
    assert_eq!(h.encode().to_vec(), raw);
    let t = ZFileHeader::decode(&read(src.as_ref(), 1536 + 639_491 - 512, 512)).unwrap();
    assert_eq!(t.flags, 0x16);
    assert_eq!(t.index_offset, 569_127);
    assert_eq!(z.algorithm(), Algorithm::Lz4);
    assert_eq!((h.level, h.block_size, h.verify), (0, 4096, true));
    assert_eq!(z.blocks(), 17_463);
    assert_eq!(z.header().original_file_size, 71_528_448);
    assert_eq!(z.header().index_offset, 569_127);
    assert_eq!(z.header().index_crc, 0x6DBA_55B0);
    // compressed blocks from 512 to 569127; jump table of 69852 bytes; trailer at 638979
    assert_eq!(z.block_offset(0), 512);
    assert_eq!(z.block_offset(z.blocks()), 569_127);
    assert_eq!(569_127 + 4 * 17_463, 638_979);
    assert_eq!(638_979 + 512, 639_491);
    // block 0: 129 bytes stored, CRC 0x70EDE93E
    assert_eq!(z.block_offset(1) - z.block_offset(0), 129);
    let b0 = read(src.as_ref(), 1536 + 512, 129);
    assert_eq!(u32::from_le_bytes(b0[125..].try_into().unwrap()), 0x70ED_E93E);
    assert_eq!(raw_crc32c(&b0[..125], SEED_BLOCK), 0x70ED_E93E);
    // block statistics: 15373 all-zero blocks stored in 30 bytes, largest 4118
    let mut zero_blocks = 0;
    let mut largest = 0;
    let mut buf = vec![0u8; 4096];
    for i in 0..z.blocks() {
        let len = z.block_offset(i + 1) - z.block_offset(i);
        largest = largest.max(len);
        z.read_block(i, &mut buf).unwrap();
        if buf.iter().all(|&b| b == 0) {
            assert_eq!(len, 30, "zero block {i}");
            zero_blocks += 1;
        }
    }
    assert_eq!(zero_blocks, 15_373);
    assert_eq!(largest, 4118);
    z.verify_all().expect("all block CRCs valid");
}

#[test]
fn hello_world_lsmt() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hello.lsmt");
    run(Command::new(bin("overlaybd-zfile")).args(["-x", "-t"]).arg(reference(HELLO)).arg(&out));
    assert_eq!(sha256_file(&out), "39195424aa10572fe002262190877b4306a66be9c62c8f1594141b01dc79c2ea");

    let l = open_layer_file(reference(HELLO)).unwrap();
    let (h, t) = (l.header(), l.trailer());
    assert_eq!((h.flags, t.flags), (0x07, 0x06));
    assert_eq!((h.index_offset, h.index_size), (0, 0));
    assert_eq!((t.version, t.sub_version), (1, 1));
    assert_eq!(t.virtual_size, 68_719_476_736);
    assert_eq!(t.uuid.to_string(), "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31");
    assert_eq!(
        Some(t.uuid),
        LayerUuid::from_chain_id("sha256:01bb4fce3eb1b56b05adf99504dafd31907a5aadac736e36b27595c8b92f07f1")
    );
    assert_eq!(t.parent_uuid, LayerUuid::NIL);
    assert!(t.user_tag.is_empty());
    assert_eq!(t.index_offset, 71_512_064);
    assert_eq!(l.on_disk_entries(), 768);
    let segs = l.index().segments();
    assert_eq!(segs.len(), 515);
    assert_eq!(segs.iter().filter(|s| s.zeroed).count(), 0);
    let data: u64 = segs.iter().map(|s| s.length as u64 * 512).sum();
    assert_eq!(data, 71_507_968);
    assert_eq!(4096 + data, t.index_offset);
    assert_eq!(
        &segs[..3],
        &[Segment::data(0, 8448, 8), Segment::data(12288, 256, 8456), Segment::data(262_144, 72, 8712)]
    );
    assert_eq!(segs.last().unwrap().end(), 133_964_032);

    // Our compaction rebuilds the reference's committed file byte for byte.
    let opts =
        CommitOptions { uuid: t.uuid, parent_uuid: t.parent_uuid, user_tag: vec![], virtual_size: t.virtual_size };
    let mut rebuilt = Vec::new();
    write_committed(segs, |s, b| l.read_segment(s, b), &opts, &mut rebuilt).unwrap();
    assert_eq!(sha256(&rebuilt), "39195424aa10572fe002262190877b4306a66be9c62c8f1594141b01dc79c2ea");
}

#[test]
fn hello_world_device_and_hello_file() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::open_files(&[reference(HELLO)], None).unwrap();
    assert_eq!(stack.size(), 68_719_476_736);
    assert!(stack.read_only());
    // the whole 64 GiB image, holes as zeros
    assert_eq!(image_sha256(&stack).unwrap(), "d9bf7a5f976ade5b2605f04fee24de1d343036e87a74d6b07816eb88bf56fe31");

    // /hello in the image is identical to /hello in the original gzip layer.
    let img = dir.path().join("hello.img");
    let f = File::create(&img).unwrap();
    for_each_chunk(&stack, |pos, data, _| {
        if let Some(d) = data {
            std::os::unix::fs::FileExt::write_all_at(&f, d, pos)?;
        }
        Ok(())
    })
    .unwrap();
    f.set_len(stack.size()).unwrap();
    drop(f);
    let hello = dir.path().join("hello");
    run(Command::new("debugfs").arg("-R").arg(format!("dump /hello {}", hello.display())).arg(&img));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(reference("hello-world-amd64-source-layer.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .arg("--transform=s,^hello$,hello.src,"));
    let ours = std::fs::read(&hello).unwrap();
    assert_eq!(ours.len(), 13_256);
    assert_eq!(sha256(&ours), "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014");
    assert_eq!(ours, std::fs::read(dir.path().join("hello.src")).unwrap());
    let stat = run(Command::new("debugfs").arg("-R").arg("stat /hello").arg(&img));
    assert!(stat.contains("Mode:  0775"), "{stat}");
}

#[test]
fn base_layer_legacy_zfile() {
    let dir = tempfile::tempdir().unwrap();
    let path = base_layer(dir.path());
    assert_eq!(sha256_file(&path), "c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9");
    let src: Arc<dyn ReadAt> = Arc::new(LocalFile::open(&path).unwrap());
    assert_eq!(src.size(), 4_737_695);
    assert!(tar::detect(src.as_ref()).unwrap().is_none(), "bare ZFile, no tar");
    let h = ZFileHeader::decode(&read(src.as_ref(), 0, 512)).unwrap();
    let t = ZFileHeader::decode(&read(src.as_ref(), 4_737_695 - 512, 512)).unwrap();
    assert_eq!(h.flags, 0x0000_7FFE_A464_0B43);
    assert_eq!(t.flags, 0x0000_7FFE_A464_0B46);
    let z = unwrap(src, true).unwrap().zfile.expect("a ZFile");
    assert_eq!(z.header().index_offset, 4_207_947);
    assert_eq!(z.blocks(), 132_309);
    assert_eq!(z.header().original_file_size, 541_937_664);
    assert_eq!((z.algorithm(), z.block_size(), z.has_checksums()), (Algorithm::Lz4, 4096, true));
    z.verify_all().expect("all block CRCs valid");

    let out = dir.path().join("base.lsmt");
    run(Command::new(bin("overlaybd-zfile")).arg("-x").arg(&path).arg(&out));
    assert_eq!(sha256_file(&out), "799dbd74cbcfbd7f37611057130b20fda0e1e671280df97cc3a05d73620d5ac7");

    let l = open_layer_file(&path).unwrap();
    let t = l.trailer();
    assert_eq!(t.uuid.to_string(), "C02FB491-B4D4-4904-8684-A014D032AF78");
    assert_eq!(t.parent_uuid, LayerUuid::NIL);
    assert_eq!(t.virtual_size, 68_719_476_736);
    assert_eq!((l.header().flags, t.flags), (0x07, 0x06));
    assert_eq!(t.index_offset, 541_798_400);
    assert_eq!(l.on_disk_entries(), 8448);
    let segs = l.index().segments();
    let zeroed = segs.iter().filter(|s| s.zeroed).count();
    assert_eq!((segs.len() - zeroed, zeroed, 8448 - segs.len()), (114, 8209, 125));
    let data: u64 = segs.iter().filter(|s| !s.zeroed).map(|s| s.length as u64 * 512).sum();
    assert_eq!(data, 541_794_304);
    assert_eq!(segs.iter().filter(|s| !s.zeroed && s.length == 16320).count(), 64);
    assert!(segs.iter().any(|s| s.zeroed && s.length == 16383));

    // rebuilt byte for byte by our compaction
    let opts =
        CommitOptions { uuid: t.uuid, parent_uuid: t.parent_uuid, user_tag: vec![], virtual_size: t.virtual_size };
    let mut rebuilt = Vec::new();
    write_committed(segs, |s, b| l.read_segment(s, b), &opts, &mut rebuilt).unwrap();
    assert_eq!(sha256(&rebuilt), "799dbd74cbcfbd7f37611057130b20fda0e1e671280df97cc3a05d73620d5ac7");

    let stack = Stack::new(vec![l], None).unwrap();
    assert_eq!(image_sha256(&stack).unwrap(), "e5f5b67aca37084f505d8af3570668fcf098b96ccb409e87caea98d4056a927d");
}
