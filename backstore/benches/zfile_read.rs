//! Random 4 KiB reads from an LZ4 ZFile-wrapped committed layer, against raw LZ4 decompression of
//! the same blocks from memory.
//!
//! `cargo bench -p backstore --bench zfile_read` (env: `ZFILE_BENCH_MIB`, default 256, the data
//! size; `ZFILE_BENCH_READS`, default 1000000; `ZFILE_BENCH_DIR`, default the system temp dir).
//!
//! The layer: `MIB` MiB of moderately compressible data (text-like runs mixed with random bytes,
//! about 2:1 with LZ4) in extents of 4 KiB..1 MiB separated by holes, committed with
//! `write_committed`, wrapped in a ZFile (LZ4, 4 KiB blocks, CRCs) and also in a tar. Every read
//! is a 4 KiB-aligned read of mapped data, so each decompresses exactly one block. Best of 3
//! rounds, the variants interleaved within each round; reported both per wall-clock second and
//! per CPU-second of the reading thread(s) (from `/proc/thread-self/schedstat`), the latter being
//! the fairer figure on a machine shared with other work. `ZFILE_BENCH_ONLY=text` runs only the
//! baseline and the variants whose name contains `text` (for profiling).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use backstore::detect::{open_layer, open_layer_file};
use backstore::io::{LocalFile, ReadAt};
use backstore::lsmt::{write_committed, CommitOptions, CommittedLayer, Segment};
use backstore::uuid::LayerUuid;
use backstore::zfile::writer::overwrite_header;
use backstore::zfile::{Algorithm, ZFile, ZFileOptions, ZFileWriter};
use backstore::{BlockDevice, Stack, SECTOR};
use rand::{Rng, SeedableRng};

const BS: usize = 4096;
const RUNS: usize = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: fast enough to generate hundreds of MiB.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const PHRASES: &[&str] = &[
    "#include <stdio.h>\n",
    "static const char *name = \"overlaybd\";\n",
    "    return -1;\n",
    "/usr/lib/x86_64-linux-gnu/libc.so.6 ",
    "{\"mediaType\": \"application/vnd.oci.image.layer.v1.tar\", ",
    "\"digest\": \"sha256:",
    "    if (ret < 0) {\n        LOG_ERROR(\"read failed\");\n    }\n",
    "the quick brown fox jumps over the lazy dog ",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, ",
    "-rw-r--r-- 1 root root ",
    "drwxr-xr-x 2 root root 4096 ",
    "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin\n",
    "    for (int i = 0; i < n; i++) {\n",
    "error: ",
    "warning: ",
    "</div>\n<div class=\"row\">",
];

/// Fills `out` with data LZ4 compresses about 2:1: runs of phrases (with a few random bytes mixed
/// in, like numbers and hashes) and runs of random bytes (already compressed files).
fn fill(g: &mut Gen, out: &mut [u8]) {
    let mut i = 0;
    while i < out.len() {
        let r = g.next();
        let run = (64 + (r >> 8) % 960) as usize;
        let end = (i + run).min(out.len());
        if r % 100 < RANDOM_PERCENT {
            while i < end {
                out[i] = g.next() as u8;
                i += 1;
            }
        } else {
            while i < end {
                let r = g.next();
                let w = PHRASES[(r % PHRASES.len() as u64) as usize].as_bytes();
                let n = w.len().min(end - i);
                out[i..i + n].copy_from_slice(&w[..n]);
                i += n;
                for _ in 0..(r >> 32) % 4 {
                    if i < end {
                        out[i] = b'0' + (g.next() % 10) as u8;
                        i += 1;
                    }
                }
            }
        }
    }
}

/// Share of random-byte runs, in percent.
const RANDOM_PERCENT: u64 = 24;

struct Built {
    zfile: std::path::PathBuf,
    tar: std::path::PathBuf,
    /// Byte offsets on the device of every mapped 4 KiB block.
    mapped: Vec<u64>,
    raw_size: u64,
    zfile_size: u64,
    extents: usize,
}

fn build(dir: &Path, mib: usize) -> Built {
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let data_len = mib << 20;
    let mut data = vec![0u8; data_len];
    fill(&mut g, &mut data);
    // Extents of 4 KiB..1 MiB with holes of 4 KiB..1 MiB between them.
    let mut segs = Vec::new();
    let mut mapped = Vec::new();
    let (mut lba, mut used) = (0u64, 0u64);
    while used < data_len as u64 {
        lba += (1 + g.next() % 256) * (BS as u64 / SECTOR);
        let len = ((1 + g.next() % 256) * BS as u64).min(data_len as u64 - used);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(4 << 20);
            segs.push(Segment::data(lba + done / SECTOR, (n / SECTOR) as u32, 0));
            done += n;
        }
        for b in 0..len / BS as u64 {
            mapped.push(lba * SECTOR + b * BS as u64);
        }
        // Where each LBA's bytes come from in `data`: device-order.
        lba += len / SECTOR;
        used += len;
    }
    let vsize = (lba * SECTOR).div_ceil(1 << 30) << 30;
    // Device byte -> data byte: extents are laid out in order, so map via a running sum.
    let mut starts = Vec::with_capacity(segs.len());
    let mut acc = 0u64;
    for s in &segs {
        starts.push((s.offset, acc));
        acc += s.length as u64 * SECTOR;
    }
    let zpath = dir.join("layer.zfile");
    let out = BufWriter::with_capacity(1 << 20, File::create(&zpath).expect("create the ZFile"));
    let opts = ZFileOptions { algorithm: Algorithm::Lz4, block_size: BS as u32, verify: true, threads: 2 };
    let mut zw = ZFileWriter::new(out, opts).expect("ZFile writer");
    let copts = CommitOptions { uuid: LayerUuid::random(), virtual_size: vsize, ..Default::default() };
    write_committed(
        &segs,
        |s, buf| {
            let k = starts.partition_point(|&(o, _)| o <= s.offset) - 1;
            let (o, d) = starts[k];
            let at = (d + (s.offset - o) * SECTOR) as usize;
            buf.copy_from_slice(&data[at..at + buf.len()]);
            Ok(())
        },
        &copts,
        &mut zw,
    )
    .expect("commit");
    let (out, header) = zw.finish().expect("finish the ZFile");
    let mut file = out.into_inner().expect("flush the ZFile");
    overwrite_header(&mut file, 0, &header).expect("overwrite the header");
    file.sync_all().ok();
    drop(file);
    let zfile_size = std::fs::metadata(&zpath).expect("stat").len();

    let tpath = dir.join("layer.tar");
    let mut t = BufWriter::with_capacity(1 << 20, File::create(&tpath).expect("create the tar"));
    t.write_all(&backstore::tar::headers(zfile_size, 0o100644)).expect("write");
    std::io::copy(&mut File::open(&zpath).expect("open"), &mut t).expect("copy");
    t.write_all(&backstore::tar::trailer(zfile_size)).expect("write");
    t.into_inner().expect("flush").sync_all().ok();
    Built { zfile: zpath, tar: tpath, mapped, raw_size: header.original_file_size, zfile_size, extents: segs.len() }
}

/// CPU time of the calling thread in seconds (from the scheduler: includes system time, excludes
/// time spent waiting for a CPU, which matters on a shared machine); `None` if unavailable.
fn thread_cpu() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? / 1e9)
}

/// Best wall-clock and CPU times over the rounds.
#[derive(Clone, Copy)]
struct Best {
    wall: f64,
    cpu: f64,
}

impl Best {
    const NONE: Best = Best { wall: f64::MAX, cpu: f64::MAX };
    fn add(&mut self, wall: f64, cpu: f64) {
        self.wall = self.wall.min(wall);
        self.cpu = self.cpu.min(cpu);
    }
}

/// Times one run of `f` on this thread: (wall, CPU) seconds.
fn time(f: &mut dyn FnMut()) -> (f64, f64) {
    let (t, c) = (Instant::now(), thread_cpu());
    f();
    let wall = t.elapsed().as_secs_f64();
    (wall, thread_cpu().zip(c).map_or(wall, |(b, a)| b - a))
}

/// Times one run of `threads` threads each running `f(thread)`: (wall, summed CPU) seconds.
fn time_mt(threads: usize, f: &(dyn Fn(usize) + Sync)) -> (f64, f64) {
    let t = Instant::now();
    let cpu: f64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                s.spawn(move || {
                    let c = thread_cpu();
                    f(i);
                    thread_cpu().zip(c).map_or(0.0, |(b, a)| b - a)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    (t.elapsed().as_secs_f64(), cpu)
}

fn checksum(buf: &[u8]) -> u64 {
    u64::from_le_bytes(buf[..8].try_into().unwrap()) ^ buf[BS - 1] as u64
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument could be honoured here, there is none.
    let mib = env_usize("ZFILE_BENCH_MIB", 256);
    let reads = env_usize("ZFILE_BENCH_READS", 1_000_000);
    let base = std::env::var_os("ZFILE_BENCH_DIR").map(Into::into).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");

    let t = Instant::now();
    let built = build(dir.path(), mib);
    println!(
        "layer: {mib} MiB of data, committed LSMT {} bytes, ZFile {} bytes (LZ4 ratio {:.2}:1), {} extents, built in {:.1}s",
        built.raw_size,
        built.zfile_size,
        built.raw_size as f64 / built.zfile_size as f64,
        built.extents,
        t.elapsed().as_secs_f64()
    );

    // Into the page cache.
    let mut whole = Vec::new();
    File::open(&built.zfile).expect("open").read_to_end(&mut whole).expect("read the ZFile");
    std::fs::read(&built.tar).expect("read the tar");

    let zf = ZFile::open(Arc::new(LocalFile::open(&built.zfile).expect("open")), true).expect("open the ZFile");
    let layer = open_layer_file(&built.zfile).expect("open the layer");

    // The same random 4 KiB-aligned offsets for every variant, and their ZFile blocks.
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let offsets: Vec<u64> = (0..reads).map(|_| built.mapped[rng.gen_range(0..built.mapped.len())]).collect();
    let blocks: Vec<(usize, usize)> = offsets
        .iter()
        .map(|&o| {
            let lba = o / SECTOR;
            let s = layer.index().lookup(lba).expect("mapped");
            let raw = (s.moffset + (lba - s.offset)) * SECTOR;
            assert_eq!(raw % BS as u64, 0, "reads must map to whole ZFile blocks");
            let i = raw / BS as u64;
            let (a, b) = (zf.block_offset(i), zf.block_offset(i + 1));
            (a as usize, (b - a) as usize)
        })
        .collect();

    // Cross-check one read of each kind against raw decompression.
    {
        let (mut a, mut b) = (vec![0u8; BS], vec![0u8; BS]);
        for k in 0..1000.min(reads) {
            let (off, len) = blocks[k];
            lz4_flex::block::decompress_into(&whole[off..off + len - 4], &mut a).expect("lz4");
            layer.read_at(&mut b, offsets[k]).expect("layer read");
            assert_eq!(a, b, "read {k} differs");
        }
    }

    type Run<'a> = Box<dyn FnMut() + 'a>;
    fn read_layer<'a>(l: &'a CommittedLayer, offsets: &'a [u64]) -> Run<'a> {
        let mut buf = vec![0u8; BS];
        Box::new(move || {
            let mut s = 0;
            for &o in offsets {
                l.read_at(&mut buf, o).expect("read");
                s ^= checksum(&buf);
            }
            std::hint::black_box(s);
        })
    }
    fn read_dev<'a>(d: &'a dyn BlockDevice, offsets: &'a [u64]) -> Run<'a> {
        let mut buf = vec![0u8; BS];
        Box::new(move || {
            let mut s = 0;
            for &o in offsets {
                d.read_at(&mut buf, o).expect("read");
                s ^= checksum(&buf);
            }
            std::hint::black_box(s);
        })
    }
    let nocrc = open_layer(Arc::new(LocalFile::open(&built.zfile).expect("open")), false).expect("open");
    let tar = open_layer_file(&built.tar).expect("open the tar layer");
    let stack = Stack::new(vec![open_layer_file(&built.zfile).expect("open")], None).expect("stack");
    let stack_pread = Stack::new(
        vec![open_layer(Arc::new(LocalFile::open_pread(&built.zfile).expect("open")), true).expect("open")],
        None,
    )
    .expect("stack");
    let stack_nocrc = Stack::new(
        vec![open_layer(Arc::new(LocalFile::open(&built.zfile).expect("open")), false).expect("open")],
        None,
    )
    .expect("stack");

    let variants_baseline = "raw LZ4 from memory (baseline)";
    let mut variants: Vec<(&str, Run)> = vec![
        (variants_baseline, {
            let (blocks, whole) = (&blocks, &whole);
            let mut dst = vec![0u8; BS];
            Box::new(move || {
                let mut s = 0;
                for &(off, len) in blocks {
                    lz4_flex::block::decompress_into(&whole[off..off + len - 4], &mut dst).expect("lz4");
                    s ^= checksum(&dst);
                }
                std::hint::black_box(s);
            })
        }),
        ("raw LZ4 + CRC32C from memory", {
            let (blocks, whole) = (&blocks, &whole);
            let mut dst = vec![0u8; BS];
            Box::new(move || {
                let mut s = 0;
                for &(off, len) in blocks {
                    let (d, c) = whole[off..off + len].split_at(len - 4);
                    let want = u32::from_le_bytes(c.try_into().expect("4 bytes"));
                    assert_eq!(backstore::crc::raw_crc32c(d, backstore::crc::SEED_BLOCK), want);
                    lz4_flex::block::decompress_into(d, &mut dst).expect("lz4");
                    s ^= checksum(&dst);
                }
                std::hint::black_box(s);
            })
        }),
        ("ZFile::read_at, CRC (lookup by hand)", {
            let (offsets, layer, zf) = (&offsets, &layer, &zf);
            let mut buf = vec![0u8; BS];
            Box::new(move || {
                let mut s = 0;
                for &o in offsets {
                    let lba = o / SECTOR;
                    let seg = layer.index().lookup(lba).expect("mapped");
                    zf.read_at(&mut buf, (seg.moffset + (lba - seg.offset)) * SECTOR).expect("read");
                    s ^= checksum(&buf);
                }
                std::hint::black_box(s);
            })
        }),
        ("CommittedLayer::read_at, CRC (open_layer_file)", read_layer(&layer, &offsets)),
        ("CommittedLayer::read_at, no CRC", read_layer(&nocrc, &offsets)),
        ("CommittedLayer::read_at, CRC, tar-wrapped", read_layer(&tar, &offsets)),
        ("Stack::read_at, CRC", read_dev(&stack, &offsets)),
        ("Stack::read_at, no CRC", read_dev(&stack_nocrc, &offsets)),
        ("Stack::read_at, CRC, pread (LocalFile::open_pread)", read_dev(&stack_pread, &offsets)),
    ];

    const THREADS: usize = 2;
    let per = reads / THREADS;
    type MtRun<'a> = Box<dyn Fn(usize) + Sync + 'a>;
    fn mt_dev<'a>(d: &'a dyn BlockDevice, offsets: &'a [u64], per: usize) -> MtRun<'a> {
        Box::new(move |t| {
            let mut b = vec![0u8; BS];
            let mut s = 0;
            for &o in &offsets[t * per..(t + 1) * per] {
                d.read_at(&mut b, o).expect("read");
                s ^= checksum(&b);
            }
            std::hint::black_box(s);
        })
    }
    let mut mt: Vec<(&str, MtRun)> = vec![
        ("raw LZ4 from memory (baseline)", {
            let (blocks, whole) = (&blocks, &whole);
            Box::new(move |t| {
                let mut dst = vec![0u8; BS];
                let mut s = 0;
                for &(off, len) in &blocks[t * per..(t + 1) * per] {
                    lz4_flex::block::decompress_into(&whole[off..off + len - 4], &mut dst).expect("lz4");
                    s ^= checksum(&dst);
                }
                std::hint::black_box(s);
            })
        }),
        ("Stack::read_at, CRC", mt_dev(&stack, &offsets, per)),
        ("Stack::read_at, no CRC", mt_dev(&stack_nocrc, &offsets, per)),
    ];

    // `ZFILE_BENCH_ONLY=text`: run only the variants whose name contains `text` (for profiling).
    if let Ok(only) = std::env::var("ZFILE_BENCH_ONLY") {
        variants.retain(|v| v.0 == variants_baseline || v.0.contains(&only));
        mt.retain(|v| v.0 == variants_baseline || v.0.contains(&only));
    }

    // Rounds interleave the variants, so that a burst of load elsewhere on the machine does not
    // penalise one variant in all its runs.
    let mut best = vec![Best::NONE; variants.len()];
    let mut best_mt = vec![Best::NONE; mt.len()];
    for _ in 0..RUNS {
        for (k, (_, f)) in variants.iter_mut().enumerate() {
            let (w, c) = time(f.as_mut());
            best[k].add(w, c);
        }
        for (k, (_, f)) in mt.iter().enumerate() {
            let (w, c) = time_mt(THREADS, f.as_ref());
            best_mt[k].add(w, c);
        }
    }

    let have_cpu = thread_cpu().is_some();
    let table = |title: String, names: Vec<&str>, best: &[Best], n: usize| {
        println!("\n{title}\n");
        println!("{:<52} {:>10} {:>7}   {:>11} {:>7}", "variant", "reads/s", "vs raw", "reads/CPU-s", "vs raw");
        for (name, b) in names.iter().zip(best) {
            let (w, c) = (n as f64 / b.wall, n as f64 / b.cpu);
            let (w0, c0) = (n as f64 / best[0].wall, n as f64 / best[0].cpu);
            if have_cpu {
                println!("{name:<52} {w:>10.0} {:>7.3}   {c:>11.0} {:>7.3}", w / w0, c / c0);
            } else {
                println!("{name:<52} {w:>10.0} {:>7.3}", w / w0);
            }
        }
    };
    table(
        format!(
            "{reads} random 4 KiB reads, one thread, best of {RUNS} (wall clock; and per CPU-second of the thread)"
        ),
        variants.iter().map(|v| v.0).collect(),
        &best,
        reads,
    );
    table(
        format!("{THREADS} threads x {per} random 4 KiB reads, best of {RUNS} (wall clock; and per CPU-second summed)"),
        mt.iter().map(|v| v.0).collect(),
        &best_mt,
        per * THREADS,
    );
}
