//! Throughput of merged-index lookups: the static B+ tree of `EndSearch` against a plain binary
//! search over the same keys, with the reference's published figures alongside.
//!
//! `cargo bench -p backstore --bench index_lookup` (env: `LOOKUP_BENCH_QUERIES`, default 4194304).
//!
//! For 1k, 10k, 100k and 1M segments: a realistic index (lengths 1..=16383 sectors, half the
//! segments right after the previous one, the others after a random gap), and the same
//! pre-generated random query LBAs (uniform over the mapped span) for every method. Each method
//! runs independent lookups single-threaded, sums the results into a checksum, and keeps the best
//! of 5 runs of about 0.3 s, timed by the thread's CPU time where Linux reports it (the machine may
//! be shared).

use std::hint::black_box;
use std::time::Instant;

use backstore::lsmt::search::EndSearch;
use backstore::lsmt::{Segment, SortedIndex};
use rand::{Rng, SeedableRng};

const RUNS: usize = 5;
/// Length of one run, in seconds.
const RUN_SECS: f64 = 0.3;
/// Segments, and the reference's AVX-512 B+ tree and binary search figures (M lookups/s).
const SIZES: [(usize, f64, f64); 4] =
    [(1_000, 220.0, 18.3), (10_000, 160.0, 12.8), (100_000, 108.0, 8.6), (1_000_000, 57.0, 5.6)];

fn index(n: usize, rng: &mut impl Rng) -> Vec<Segment> {
    let mut pos = 0u64;
    let mut moffset = 8u64;
    (0..n)
        .map(|_| {
            if rng.gen_bool(0.5) {
                pos += rng.gen_range(1..=65_536);
            }
            let len = rng.gen_range(1..=16_383u32);
            let s = Segment::data(pos, len, moffset);
            pos += len as u64;
            moffset += len as u64;
            s
        })
        .collect()
}

/// Nanoseconds this thread has spent on a CPU (Linux `schedstat`), if known.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Best of `RUNS` throughputs in M lookups/s, and the checksum of one pass over the queries.
///
/// A run makes as many passes over the queries as fill about `RUN_SECS`, and is timed by the CPU
/// time of this thread where Linux reports it (so that other processes on a shared machine do not
/// count; it may tick only every few milliseconds, hence the long runs), by the wall clock
/// otherwise.
fn measure(queries: &[u64], f: impl Fn(u64) -> u64) -> (f64, u64) {
    let pass = || {
        let mut s = 0u64;
        for &q in black_box(queries) {
            s = s.wrapping_add(f(q));
        }
        black_box(s)
    };
    let t = Instant::now();
    let sum = pass();
    let passes = (RUN_SECS / t.elapsed().as_secs_f64().max(1e-6)).ceil().max(1.0) as usize;
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let (c0, t) = (cpu_ns(), Instant::now());
        for _ in 0..passes {
            assert_eq!(pass(), sum);
        }
        let wall = t.elapsed().as_secs_f64();
        let secs = match (c0, cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => wall,
        };
        best = best.min(secs);
    }
    ((queries.len() * passes) as f64 / best / 1e6, sum)
}

fn main() {
    let nq: usize = std::env::var("LOOKUP_BENCH_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 22);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0B_D1DE);
    let clock = if cpu_ns().is_some() { "thread CPU time" } else { "wall-clock time" };
    println!(
        "index_lookup: {nq} random queries, runs of about {RUN_SECS} s, best of {RUNS} by {clock}, single thread; \
         M lookups/s"
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average: {}", load.trim());
    }
    println!("search structure: {:?}", EndSearch::new(&[1]));
    println!();
    println!(
        "{:>9} | {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>7} {:>8} {:>9}",
        "segments",
        "ours",
        "binary",
        "ratio",
        "lookup",
        "1-load",
        "ref-tree",
        "ref-bin",
        "ref-r",
        "ours/ref",
        "binary/ref"
    );
    for (n, ref_tree, ref_bin) in SIZES {
        let segs = index(n, &mut rng);
        let span = segs[segs.len() - 1].end();
        let ends: Vec<u64> = segs.iter().map(Segment::end).collect();
        let search = EndSearch::new(&ends);
        let idx = SortedIndex::new(segs);
        let queries: Vec<u64> = (0..nq).map(|_| rng.gen_range(0..span)).collect();

        let (ours, c1) = measure(&queries, |q| search.upper_bound(q) as u64);
        let (binary, c2) = measure(&queries, |q| search.upper_bound_binary(q) as u64);
        let (lookup, c3) = measure(&queries, |q| idx.lookup(q).map_or(1, |s| s.moffset));
        assert_eq!(c1, c2, "the tree and the binary search disagree");
        // One random load from an array as large as the keys: what the memory system allows now.
        let (one_load, _) = measure(&queries, |q| {
            let i = ((q.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) * n as u64) >> 32;
            ends[i as usize]
        });
        let want: u64 = queries
            .iter()
            .map(|&q| {
                let i = ends.partition_point(|&e| e <= q);
                idx.segments().get(i).filter(|s| s.offset <= q).map_or(1, |s| s.moffset)
            })
            .fold(0, u64::wrapping_add);
        assert_eq!(c3, want, "SortedIndex::lookup disagrees with a binary search");

        println!(
            "{:>9} | {:>8.1} {:>8.1} {:>7.1}x {:>8.1} {:>8.0} | {:>8.1} {:>8.1} {:>6.1}x {:>7.2}x {:>9.2}x",
            n,
            ours,
            binary,
            ours / binary,
            lookup,
            one_load,
            ref_tree,
            ref_bin,
            ref_tree / ref_bin,
            ours / ref_tree,
            binary / ref_bin
        );
    }
    println!();
    println!("ours: EndSearch::upper_bound; binary: EndSearch::upper_bound_binary (partition_point over the");
    println!("same keys); lookup: SortedIndex::lookup (upper_bound plus the covering check on the entry);");
    println!("1-load: one random load per query from an array as large as the keys (a ceiling set by the");
    println!("memory system at that moment); ref-*: the reference's AVX-512 linearized B+ tree and binary");
    println!("search, as published; ours/ref, binary/ref: our figures over the reference's.");
}
