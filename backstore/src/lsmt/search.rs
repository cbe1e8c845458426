//! Lookup of the first index entry that ends after a sector: the hot path of every read.
//!
//! Keys are the entries' end sectors, sorted ascending; `upper_bound(lba)` is the position of
//! the first key greater than `lba`, i.e. the first entry that may cover `lba`.
//!
//! # Layout
//!
//! [`EndSearch`] is a static B+ tree ("S+ tree") laid out linearly, without pointers:
//!
//! * a node is 8 keys (64 bytes, one cache line, aligned; one AVX-512 compare);
//! * the **leaf layer** is the sorted keys themselves, cut into nodes and padded with the largest
//!   key, so the answer is `leaf * 8 + (keys of the leaf <= query)`;
//! * an **internal node** has 9 children; child `c` of node `k` is node `9 * k + c` of the
//!   layer below, and key `i` of node `k` is the first key under child `9 * k + i + 1` (the
//!   largest key if that child does not exist). Counting the node's keys `<= query` gives the
//!   child to descend into;
//! * layers are added until the top one has at most 33 nodes; if it has more than one, a **root**
//!   of 8 to 32 keys (the first key under each top node but the first, padded to a multiple of 8)
//!   picks among them. It is only as wide as needed (one 8-key compare for up to 9 top nodes) and
//!   can replace up to two ordinary levels: 1 000 keys take 4 compares in 3 levels, 100 000 take
//!   7 compares in 5 levels, instead of 4 in 4 and 6 in 6 for a plain tree of 8-key nodes;
//! * the root comes first in memory, then the layers from the top down; each layer's first node
//!   is in a small table.
//!
//! The internal layers add about 1/8 to the keys. Nodes of 8 keys were measured faster than nodes
//! of 16 or 32 (fewer compares per lookup, one cache line per level). Keys are stored with their
//! top bit flipped, as `i64`, so that one signed comparison orders them as unsigned numbers on
//! every kernel: AVX-512, AVX2 (which only has a signed 64-bit compare) and the portable scalar
//! one. The kernel is picked
//! once, when the structure is built, from the CPU's features, together with a search function
//! unrolled for the tree's shape.
//!
//! Only `upper_bound(u64::MAX)` could count padding keys, so it is answered up front.
//!
//! # Compact layout (large trees)
//!
//! From [`COMPACT_MIN`] keys, where the plain tree no longer fits the caches close to the core,
//! the bottom layers are **compact** when the keys allow it: a compact node is 16 `u32` offsets
//! (one cache line, one 16-lane compare) from the first key under it. A leaf holds 16 keys; an
//! internal compact node holds the first key under each of its 16 children (the first offset is
//! 0). Offsets are plain `u32`s (`u32::MAX` for missing children and keys), compared unsigned.
//! The query is turned into an offset once, from the base of the top compact node and clamped to
//! `2^32 - 2`, then carried down: the offset of the chosen child is subtracted from it, in the
//! vector register it is compared in. Above the compact layers, `u64` nodes of 8 keys hold the
//! first key under each of their 8 children, so that the lowest of them gives the base of the top
//! compact node. Leaves take half the bytes of plain ones, and 16-way compact nodes save layers.
//! If any leaf's keys span `2^32 - 1` or more, the plain layout is used; compact internal layers
//! stop at the first one where the keys under some node span that much (which keeps the clamped
//! query offset right all the way down). Compact trees answer queries below the smallest key up
//! front. As for the plain layout, the descent is unrolled for the tree's shape (root chunks and
//! compact layers), picked when the structure is built.
//!
//! Node arrays of at least 2 MiB go in huge pages (`MADV_HUGEPAGE`) when rounding them up stays
//! within 1.2 times 8 bytes per key: fewer TLB misses on the random accesses.

use std::fmt;

/// Keys per node.
const B: usize = 8;
/// Children per internal node.
const FANOUT: usize = B + 1;
/// Keys per 8-key chunk (one cache line, one AVX-512 compare).
const CHUNK: usize = 8;
/// Most keys in the root (wider roots were measured slower: their compares cost more than the
/// level they save).
const MAX_ROOT: usize = 32;
/// Most ordinary layers. 12 layers under a full root hold `8 * 9^11 * 33` (> 8 * 10^12) keys,
/// far more than the 1.28 * 10^8 entries a merged index may have.
const MAX_HEIGHT: usize = 12;
/// Flipping the top bit maps unsigned order onto signed order.
const FLIP: u64 = 1 << 63;
/// The padding key, flipped: the largest `i64`, i.e. `u64::MAX`.
const PAD: i64 = i64::MAX;

/// Fewest keys for the compact layout: below, the plain one (faster while it fits the caches
/// close to the core) is used. Measured (AVX-512): plain faster at 10 000 keys (186 against 143 M
/// lookups/s), compact faster at 100 000 (about 113 against 98).
const COMPACT_MIN: usize = 1 << 16;
/// Most bytes of nodes per key (the keys plus a fifth) once rounded up to huge pages.
const BUDGET: usize = 8 * 12 / 10;
/// Keys per compact node: 16 `u32` offsets, one cache line.
const CB: usize = 16;
/// Children per u64 node of the compact layout (its first key is the first key under its first
/// child, which gives the offsets below it their base).
const WIDE: usize = B;
/// The largest offset a compact node stores, and the largest query offset compared with it.
/// `u32::MAX` is the padding, which no clamped query offset reaches.
const MAX_OFF: u64 = u32::MAX as u64 - 1;
/// The padding offset.
const PAD32: u32 = u32::MAX;

#[inline(always)]
fn flip(key: u64) -> i64 {
    (key ^ FLIP) as i64
}

#[inline(always)]
fn unflip(key: i64) -> u64 {
    key as u64 ^ FLIP
}

/// The query offset `q - base` (`q >= base`), clamped to [`MAX_OFF`].
#[inline(always)]
fn query32(q: u64, base: u64) -> u32 {
    (q - base).min(MAX_OFF) as u32
}

/// A compact node of 16 offsets, as a [`Node`].
fn pack32(offs: [u32; CB]) -> Node {
    // SAFETY: `[u32; 16]` and `[i64; 8]` have the same size (64 bytes), and every bit pattern is
    // valid for both.
    Node(unsafe { std::mem::transmute::<[u32; CB], [i64; B]>(offs) })
}

/// One node: 8 flipped keys, one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Node([i64; B]);

const _: () = assert!(std::mem::size_of::<Node>() == B * 8 && std::mem::align_of::<Node>() == 64);
const _: () = assert!(B.is_multiple_of(CHUNK) && MAX_ROOT.is_multiple_of(B));

/// Nodes in memory: a plain allocation, or for large trees one of whole 2 MiB huge pages (asked
/// of the kernel with `MADV_HUGEPAGE`), so that the lookups' random accesses miss the TLB less.
struct Lines {
    ptr: std::ptr::NonNull<Node>,
    len: usize,
    layout: std::alloc::Layout,
}

/// Size of a huge page.
const HUGE: usize = 2 << 20;

impl Lines {
    /// `len` nodes of padding keys, in huge pages if they take at least one and rounding them up
    /// to whole huge pages stays within `budget` bytes.
    fn new(len: usize, budget: usize) -> Self {
        let bytes = len * std::mem::size_of::<Node>();
        let huge = cfg!(target_os = "linux") && bytes >= HUGE && bytes.div_ceil(HUGE) * HUGE <= budget;
        let layout = if huge {
            std::alloc::Layout::from_size_align(bytes.div_ceil(HUGE) * HUGE, HUGE)
        } else {
            std::alloc::Layout::array::<Node>(len)
        }
        .expect("node array too large");
        if layout.size() == 0 {
            return Lines { ptr: std::ptr::NonNull::dangling(), len: 0, layout };
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw.cast::<Node>()) else { std::alloc::handle_alloc_error(layout) };
        #[cfg(target_os = "linux")]
        if huge {
            // SAFETY: the range is the allocation just made, 2 MiB-aligned; the advice only
            // changes how the kernel backs it (if it fails, small pages remain).
            unsafe { nix::libc::madvise(raw.cast(), layout.size(), nix::libc::MADV_HUGEPAGE) };
        }
        for i in 0..len {
            // SAFETY: node `i < len` is inside the allocation, suitably aligned.
            unsafe { ptr.as_ptr().add(i).write(Node([PAD; B])) };
        }
        Lines { ptr, len, layout }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if self.layout.size() == 0 {
            return;
        }
        // SAFETY: allocated in `Lines::new` with this layout; `Node` needs no drop.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) }
    }
}

impl Clone for Lines {
    fn clone(&self) -> Self {
        let mut c = Lines::new(self.len, self.layout.size());
        c.copy_from_slice(self);
        c
    }
}

impl std::ops::Deref for Lines {
    type Target = [Node];
    fn deref(&self) -> &[Node] {
        // SAFETY: `len` initialised nodes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [Node] {
        // SAFETY: `len` initialised nodes owned by `self`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: `Lines` owns its nodes (plain data) like a `Vec<Node>`.
unsafe impl Send for Lines {}
// SAFETY: shared access only reads.
unsafe impl Sync for Lines {}

/// Position of the first key greater than a query.
///
/// # Safety
/// The function must be [`Kernel::search`] (or [`Kernel::search_compact`]) of a kernel the CPU
/// runs and of the tree's shape, and the query must not be `u64::MAX` (which could count padding
/// keys).
type SearchFn = unsafe fn(&EndSearch, u64) -> usize;

/// The [`SearchFn`]s of one kernel for `R` root chunks and `1..=MAX_HEIGHT` layers (ordinary
/// layers for the u64 layout, compact layers for the compact one).
macro_rules! by_height {
    ($($f:ident)::+, $r:literal) => {{
        let t: [SearchFn; MAX_HEIGHT] = [
            $($f)::+::<$r, 1>,
            $($f)::+::<$r, 2>,
            $($f)::+::<$r, 3>,
            $($f)::+::<$r, 4>,
            $($f)::+::<$r, 5>,
            $($f)::+::<$r, 6>,
            $($f)::+::<$r, 7>,
            $($f)::+::<$r, 8>,
            $($f)::+::<$r, 9>,
            $($f)::+::<$r, 10>,
            $($f)::+::<$r, 11>,
            $($f)::+::<$r, 12>,
        ];
        t
    }};
}

/// The [`SearchFn`] of one kernel for `root` chunks of root keys and `height` layers.
macro_rules! pick {
    ($($f:ident)::+, $root:expr, $height:expr) => {{
        let table = match $root {
            0 => by_height!($($f)::+, 0),
            1 => by_height!($($f)::+, 1),
            2 => by_height!($($f)::+, 2),
            3 => by_height!($($f)::+, 3),
            4 => by_height!($($f)::+, 4),
            r => unreachable!("root of {r} chunks"),
        };
        table[$height - 1]
    }};
}

/// How a node is searched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Kernel {
    /// Portable: a branchless binary search in each node.
    #[default]
    Scalar,
    /// AVX2 compares (x86-64 CPUs with AVX2).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 compares into masks (x86-64 CPUs with AVX-512F).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("popcnt") {
                return Kernel::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("popcnt") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// The search function of this kernel for a compact tree with `root` chunks of root keys
    /// (0: none) over `compact` compact layers (at least 1).
    fn search_compact(self, root: usize, compact: usize) -> SearchFn {
        match self {
            Kernel::Scalar => pick!(search_compact_scalar, root, compact),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => pick!(x86::search_compact_avx2, root, compact),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => pick!(x86::search_compact_avx512, root, compact),
        }
    }

    /// The search function of this kernel for a tree with `root` chunks of root keys (0: none)
    /// over `height` ordinary layers (0: empty tree).
    fn search(self, root: usize, height: usize) -> SearchFn {
        if height == 0 {
            return search_empty;
        }
        match self {
            Kernel::Scalar => pick!(search_scalar, root, height),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => pick!(x86::search_avx2, root, height),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => pick!(x86::search_avx512, root, height),
        }
    }
}

/// The [`SearchFn`] of an empty tree.
unsafe fn search_empty(_: &EndSearch, _: u64) -> usize {
    0
}

/// The descent through a tree of `R` root chunks over `H` ordinary layers, with
/// `count(keys, chunks)` the number of the `8 * chunks` keys at `keys` that are `<=` the query.
///
/// # Safety
/// `s` must have that shape and the query must not be `i64::MAX`.
#[inline(always)]
unsafe fn descend<const R: usize, const H: usize>(s: &EndSearch, count: impl Fn(*const i64, usize) -> usize) -> usize {
    debug_assert_eq!((s.root, s.height), (R, H));
    let base = s.nodes.as_ptr();
    let mut k = if R > 0 { count(base.cast::<i64>(), R) } else { 0 };
    let mut h = H - 1;
    while h > 0 {
        // SAFETY: node `k` of layer `h` exists: it is the top node (k = 0, no root) or a child
        // chosen by counting the keys `<=` a query below `i64::MAX` in its parent; the keys that
        // stand for missing children are `i64::MAX`, so they are never counted.
        let node = unsafe { base.add(s.offsets[h] + k) };
        k = k * FANOUT + count(node.cast::<i64>(), B / CHUNK);
        h -= 1;
    }
    // SAFETY: as above, for the leaf layer.
    let node = unsafe { base.add(s.offsets[0] + k) };
    k * B + count(node.cast::<i64>(), B / CHUNK)
}

/// The portable [`SearchFn`]: a branchless binary search in each node.
///
/// # Safety
/// See [`SearchFn`].
unsafe fn search_scalar<const R: usize, const H: usize>(s: &EndSearch, q: u64) -> usize {
    let q = flip(q);
    let count = |keys: *const i64, chunks: usize| {
        // SAFETY: `descend` passes `8 * chunks` keys inside `s.nodes`.
        let keys = unsafe { std::slice::from_raw_parts(keys, chunks * CHUNK) };
        keys.partition_point(|&k| k <= q)
    };
    // SAFETY: the caller keeps the contract of `SearchFn`, which implies the one of `descend`.
    unsafe { descend::<R, H>(s, count) }
}

/// The descent through a compact tree of `R` root chunks over `C` compact layers, with
/// `count64(keys, chunks, q)` the number of the `8 * chunks` flipped keys at `keys` that are `<=`
/// the flipped query `q`; `splat(t)` the query offset `t` as the kernel holds it (`V`: a vector
/// of 16 copies, or `t` itself); `count32(offs, t)` the number of the 16 offsets at `offs` that
/// are `<=` the query offset `t`; and `sub(t, off)` the query offset `t` less the offset at `off`.
///
/// Once clamped at the top compact layer, the query offset is carried down by subtracting the
/// offset of the chosen child: no dependent scalar load, no clamp and no broadcast from a general
/// register per layer. That is exact where `q - base` fits, and otherwise still at least every
/// offset under the node, because all the keys under a compact node fit offsets from its first.
///
/// # Safety
/// `s` must be compact with that shape (`s.root == R`, `s.compact == C`) and the query must be at
/// least `s.first`.
#[inline(always)]
unsafe fn descend_compact<const R: usize, const C: usize, V: Copy>(
    s: &EndSearch,
    q: u64,
    count64: impl Fn(*const i64, usize, i64) -> usize,
    splat: impl Fn(u32) -> V,
    count32: impl Fn(*const u32, V) -> usize,
    sub: impl Fn(V, *const u32) -> V,
) -> usize {
    debug_assert!(s.compact == C && s.root == R && q >= s.first);
    let base = s.nodes.as_ptr();
    let qf = flip(q);
    let (mut k, mut b) = (0, s.first);
    if R > 0 {
        // The root holds the first key under each top node; the first one is `s.first <= q`.
        let c = count64(base.cast::<i64>(), R, qf);
        k = c - 1;
        // SAFETY: `k` is below the number of root keys, all inside `s.nodes`.
        b = unflip(unsafe { *base.cast::<i64>().add(k) });
    }
    // `u64` layers above the compact ones: only where internal compact nodes did not fit.
    let mut h = s.height;
    while h > C {
        h -= 1;
        // SAFETY: node `k` of layer `h` exists: it is the top node (no root) or the child chosen
        // by counting the keys `<=` the query in its parent, whose keys are the first keys under
        // its children (`i64::MAX`, never counted, for missing ones) and whose first key is `<=`
        // the query (by induction from `q >= s.first`).
        let node = unsafe { base.add(s.offsets[h] + k) }.cast::<i64>();
        let c = count64(node, 1, qf);
        // SAFETY: `c - 1 < 8`: a key of `node`.
        b = unflip(unsafe { *node.add(c - 1) });
        k = k * WIDE + c - 1;
    }
    let mut t = splat(query32(q, b));
    let mut h = C;
    while h > 1 {
        h -= 1;
        // SAFETY: as above; the offsets are from the first key under the node, which is `<= q`,
        // `t` is at least as large as an offset exactly when that key is `<= q` (see above), and
        // missing children have the offset `u32::MAX`, above any `t <= MAX_OFF`, never counted.
        let node = unsafe { base.add(s.offsets[h] + k) }.cast::<u32>();
        let c = count32(node, t);
        // SAFETY: `c - 1 < 16`: an offset of `node`, `<= t`.
        t = sub(t, unsafe { node.add(c - 1) });
        k = k * CB + c - 1;
    }
    // SAFETY: as above, for the leaf layer.
    let node = unsafe { base.add(s.offsets[0] + k) }.cast::<u32>();
    k * CB + count32(node, t)
}

/// The portable compact [`SearchFn`].
///
/// # Safety
/// See [`SearchFn`].
unsafe fn search_compact_scalar<const R: usize, const C: usize>(s: &EndSearch, q: u64) -> usize {
    if q < s.first {
        return 0;
    }
    let count64 = |keys: *const i64, chunks: usize, q: i64| {
        // SAFETY: `descend_compact` passes `8 * chunks` keys inside `s.nodes`.
        let keys = unsafe { std::slice::from_raw_parts(keys, chunks * CHUNK) };
        keys.partition_point(|&k| k <= q)
    };
    let count32 = |offs: *const u32, t: u32| {
        // SAFETY: `descend_compact` passes 16 offsets inside `s.nodes`.
        let offs = unsafe { std::slice::from_raw_parts(offs, CB) };
        offs.partition_point(|&o| o <= t)
    };
    // SAFETY: `descend_compact` passes an offset inside `s.nodes`, `<= t`.
    let sub = |t: u32, off: *const u32| t - unsafe { *off };
    // SAFETY: the caller keeps the contract of `SearchFn`: a compact tree of this shape, and
    // `q >= s.first`.
    unsafe { descend_compact::<R, C, u32>(s, q, count64, |t| t, count32, sub) }
}

/// A static search structure over sorted `u64` keys.
#[derive(Clone)]
pub struct EndSearch {
    /// Number of keys.
    len: usize,
    /// Chunks of 8 keys in the root, at the start of `nodes` (0: no root, the top layer has one
    /// node).
    root: usize,
    /// Number of ordinary layers (0 when empty, 1 when all keys fit one leaf).
    height: usize,
    /// `offsets[h]`: position in `nodes` of the first node of layer `h` (0 = leaves).
    offsets: [usize; MAX_HEIGHT],
    /// Compact layout: the number of compact layers (leaves included) under the `u64` ones; 0 for
    /// the plain layout.
    compact: usize,
    /// The smallest key (compact layout).
    first: u64,
    /// The first key of each leaf (compact layout, for `upper_bound_binary`).
    leaf_first: Vec<u64>,
    /// The root, then the layers from the top down.
    nodes: Lines,
    kernel: Kernel,
    /// `kernel.search(root, height)`, or `kernel.search_compact(root, compact)`.
    search: SearchFn,
}

impl Default for EndSearch {
    fn default() -> Self {
        EndSearch {
            len: 0,
            root: 0,
            height: 0,
            offsets: [0; MAX_HEIGHT],
            compact: 0,
            first: 0,
            leaf_first: Vec::new(),
            nodes: Lines::new(0, 0),
            kernel: Kernel::Scalar,
            search: search_empty,
        }
    }
}

impl fmt::Debug for EndSearch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndSearch")
            .field("len", &self.len)
            .field("root_keys", &(self.root * CHUNK))
            .field("height", &self.height)
            .field("compact", &self.compact)
            .field("nodes", &self.nodes.len())
            .field("kernel", &self.kernel)
            .finish()
    }
}

impl EndSearch {
    /// Builds the structure over `keys`, which must be sorted ascending.
    pub fn new(keys: &[u64]) -> Self {
        Self::with_kernel(keys, Kernel::detect())
    }

    /// Builds the structure searched by `kernel`, which the CPU must run.
    fn with_kernel(keys: &[u64], kernel: Kernel) -> Self {
        let compact = if keys.len() >= COMPACT_MIN { Self::compact(keys, kernel) } else { None };
        compact.unwrap_or_else(|| Self::plain(keys, kernel))
    }

    /// The compact layout, if every leaf's keys span less than [`MAX_OFF`].
    fn compact(keys: &[u64], kernel: Kernel) -> Option<Self> {
        debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        let n = keys.len();
        if n == 0 {
            return None;
        }
        // Whether the keys from position `lo` to position `hi` fit offsets from the key at `lo`.
        let fits = |lo: usize, hi: usize| keys[hi] - keys[lo] <= MAX_OFF;
        // Compact layers, leaves first: nodes, and keys under one node.
        let mut sizes = vec![n.div_ceil(CB)];
        let mut spans = vec![CB];
        if !(0..sizes[0]).all(|j| fits(j * CB, (j * CB + CB - 1).min(n - 1))) {
            return None;
        }
        while sizes[sizes.len() - 1] > MAX_ROOT {
            let size = sizes[sizes.len() - 1].div_ceil(CB);
            let span = spans[spans.len() - 1].saturating_mul(CB);
            // Every key under node `k` must fit an offset from its first key, so that a query
            // offset clamped at the top compact layer stays exact enough all the way down.
            if !(0..size).all(|k| fits(k * span, (k + 1).saturating_mul(span).min(n) - 1)) {
                break;
            }
            sizes.push(size);
            spans.push(span);
        }
        let compact = sizes.len();
        while sizes[sizes.len() - 1] > MAX_ROOT {
            sizes.push(sizes[sizes.len() - 1].div_ceil(WIDE));
            spans.push(spans[spans.len() - 1].saturating_mul(WIDE));
        }
        let height = sizes.len();
        if height > MAX_HEIGHT {
            return None;
        }
        let top = sizes[height - 1];
        let root = if top > 1 { top.div_ceil(CHUNK) } else { 0 };
        let mut s = EndSearch { len: n, root, height, compact, first: keys[0], kernel, ..Default::default() };
        let mut at = (root * CHUNK).div_ceil(B);
        for h in (0..height).rev() {
            s.offsets[h] = at;
            at += sizes[h];
        }
        s.nodes = Lines::new(at, n.saturating_mul(BUDGET));
        // The first key under each node of `layer` (`i64::MAX` past the last one), flipped.
        let first = |layer: usize, k: usize| keys.get(k.saturating_mul(spans[layer])).map_or(PAD, |&key| flip(key));
        for (k, slot) in s.nodes[..s.offsets[height - 1]].iter_mut().flat_map(|n| n.0.iter_mut()).enumerate() {
            *slot = first(height - 1, k);
        }
        for (h, &size) in sizes.iter().enumerate().skip(compact) {
            for (k, node) in s.nodes[s.offsets[h]..s.offsets[h] + size].iter_mut().enumerate() {
                for (i, slot) in node.0.iter_mut().enumerate() {
                    *slot = first(h - 1, k * WIDE + i);
                }
            }
        }
        for h in 0..compact {
            // Offsets in node `k` of layer `h`: of the keys (leaves) or of the first keys under
            // the children, from the node's first key.
            let child = if h == 0 { 1 } else { spans[h - 1] };
            for (k, node) in s.nodes[s.offsets[h]..s.offsets[h] + sizes[h]].iter_mut().enumerate() {
                let base = keys[k * spans[h]];
                let offs = std::array::from_fn(|i| {
                    keys.get((k * CB + i).saturating_mul(child)).map_or(PAD32, |&key| (key - base) as u32)
                });
                *node = pack32(offs);
            }
        }
        s.leaf_first = (0..sizes[0]).map(|j| keys[j * CB]).collect();
        s.search = kernel.search_compact(root, compact);
        Some(s)
    }

    /// The plain layout of `u64` keys.
    fn plain(keys: &[u64], kernel: Kernel) -> Self {
        debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        let n = keys.len();
        let mut s = EndSearch { len: n, kernel, ..Default::default() };
        if n == 0 {
            return s;
        }
        // Nodes per ordinary layer, leaves first, and keys under one node of each.
        let mut sizes = vec![n.div_ceil(B)];
        let mut spans = vec![B];
        while sizes[sizes.len() - 1] > MAX_ROOT + 1 {
            sizes.push(sizes[sizes.len() - 1].div_ceil(FANOUT));
            spans.push(spans[spans.len() - 1].saturating_mul(FANOUT));
        }
        s.height = sizes.len();
        assert!(s.height <= MAX_HEIGHT, "too many keys for EndSearch: {n}");
        let top = sizes[s.height - 1];
        let root_keys = top - 1;
        s.root = match root_keys {
            0 => 0,
            _ => root_keys.div_ceil(CHUNK),
        };
        let mut at = (s.root * CHUNK).div_ceil(B);
        for h in (0..s.height).rev() {
            s.offsets[h] = at;
            at += sizes[h];
        }
        s.nodes = Lines::new(at, n.saturating_mul(BUDGET));

        // The first key under each top node but the first, `B` to a node.
        let top_span = spans[s.height - 1];
        for (i, slot) in s.nodes[..s.offsets[s.height - 1]].iter_mut().flat_map(|n| n.0.iter_mut()).enumerate() {
            *slot = keys.get((i + 1).saturating_mul(top_span)).map_or(PAD, |&key| flip(key));
        }
        let leaves = &mut s.nodes[s.offsets[0]..s.offsets[0] + sizes[0]];
        for (node, chunk) in leaves.iter_mut().zip(keys.chunks(B)) {
            for (slot, &key) in node.0.iter_mut().zip(chunk) {
                *slot = flip(key);
            }
        }
        for h in 1..s.height {
            let span = spans[h - 1];
            let layer = &mut s.nodes[s.offsets[h]..s.offsets[h] + sizes[h]];
            for (k, node) in layer.iter_mut().enumerate() {
                for (i, slot) in node.0.iter_mut().enumerate() {
                    let first = (k * FANOUT + i + 1).saturating_mul(span);
                    *slot = keys.get(first).map_or(PAD, |&key| flip(key));
                }
            }
        }
        s.search = kernel.search(s.root, s.height);
        s
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index of the first key `> key` (`len()` if none).
    #[inline]
    pub fn upper_bound(&self, key: u64) -> usize {
        // Only the largest query could count padding keys.
        if key == u64::MAX {
            return self.len;
        }
        // SAFETY: `search` is `kernel.search(root, height)` (or, compact,
        // `kernel.search_compact(root, compact)`) for this tree, with a kernel that
        // `Kernel::detect` (or a test) found the CPU runs, and the query is below `i64::MAX`.
        unsafe { (self.search)(self, key) }
    }

    /// The same as [`upper_bound`](Self::upper_bound), by a plain binary search over the keys
    /// (kept for comparison).
    pub fn upper_bound_binary(&self, key: u64) -> usize {
        if self.compact > 0 {
            // The last leaf whose first key is `<= key`, then the offsets in it.
            let j = self.leaf_first.partition_point(|&k| k <= key);
            if j == 0 {
                return 0;
            }
            let leaf = &self.nodes[self.offsets[0] + j - 1];
            // SAFETY: a `repr(C)` node of 8 `i64` is 16 initialised `u32`, 64-byte aligned.
            let offs = unsafe { std::slice::from_raw_parts(leaf.0.as_ptr().cast::<u32>(), CB) };
            let t = query32(key, self.leaf_first[j - 1]);
            return (j - 1) * CB + offs.partition_point(|&o| o <= t);
        }
        let q = flip(key);
        self.keys().partition_point(|&k| k <= q)
    }

    /// The keys, flipped, in order (the leaf layer without its padding).
    fn keys(&self) -> &[i64] {
        if self.len == 0 {
            return &[];
        }
        let leaves = &self.nodes[self.offsets[0]..];
        // SAFETY: the leaf layer is the last layer, `len.div_ceil(8)` nodes of `repr(C)`
        // `[i64; 8]` with no padding (size 64, align 64), so it is `8 * nodes >= len`
        // contiguous, initialised `i64`s borrowed from `self`.
        unsafe { std::slice::from_raw_parts(leaves.as_ptr().cast::<i64>(), self.len) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{descend, descend_compact, flip, EndSearch, CHUNK};
    use std::arch::x86_64::*;

    /// The AVX-512 [`SearchFn`](super::SearchFn): one compare into a mask per 8 keys.
    ///
    /// # Safety
    /// See [`SearchFn`](super::SearchFn); the CPU must support AVX-512F and POPCNT.
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn search_avx512<const R: usize, const H: usize>(s: &EndSearch, q: u64) -> usize {
        let qv = _mm512_set1_epi64(flip(q));
        let count = |keys: *const i64, chunks: usize| {
            let p = keys.cast::<__m512i>();
            let mut n = 0;
            // Up to 32 keys per mask word (the root has up to 4 chunks, a node 1).
            for w in 0..chunks.div_ceil(4) {
                let mut mask = 0u32;
                for j in 0..(chunks - 4 * w).min(4) {
                    // SAFETY: `descend` passes `8 * chunks` keys inside `s.nodes`, 64-byte aligned.
                    let v = unsafe { _mm512_load_si512(p.add(4 * w + j)) };
                    mask |= (_mm512_cmple_epi64_mask(v, qv) as u32) << (CHUNK * j);
                }
                n += mask.count_ones() as usize;
            }
            n
        };
        // SAFETY: the caller keeps the contract of `SearchFn`, which implies the one of `descend`.
        unsafe { descend::<R, H>(s, count) }
    }

    /// The AVX-512 compact [`SearchFn`](super::SearchFn).
    ///
    /// # Safety
    /// See [`SearchFn`](super::SearchFn); the CPU must support AVX-512F and POPCNT.
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn search_compact_avx512<const R: usize, const C: usize>(s: &EndSearch, q: u64) -> usize {
        if q < s.first {
            return 0;
        }
        let count64 = |keys: *const i64, chunks: usize, q: i64| {
            let qv = _mm512_set1_epi64(q);
            let p = keys.cast::<__m512i>();
            let mut mask = 0u32;
            for j in 0..chunks {
                // SAFETY: `descend_compact` passes `8 * chunks` (at most 32) keys inside
                // `s.nodes`, 64-byte aligned.
                let v = unsafe { _mm512_load_si512(p.add(j)) };
                mask |= (_mm512_cmple_epi64_mask(v, qv) as u32) << (CHUNK * j);
            }
            mask.count_ones() as usize
        };
        let splat = |t: u32| _mm512_set1_epi32(t as i32);
        let count32 = |offs: *const u32, t: __m512i| {
            // SAFETY: `descend_compact` passes 16 offsets inside `s.nodes`, 64-byte aligned.
            let v = unsafe { _mm512_load_si512(offs.cast::<__m512i>()) };
            _mm512_cmple_epu32_mask(v, t).count_ones() as usize
        };
        // SAFETY: `descend_compact` passes an offset inside `s.nodes`.
        let sub = |t: __m512i, off: *const u32| _mm512_sub_epi32(t, _mm512_set1_epi32(unsafe { *off } as i32));
        // SAFETY: the caller keeps the contract of `SearchFn`: a compact tree of this shape, and
        // `q >= s.first`.
        unsafe { descend_compact::<R, C, __m512i>(s, q, count64, splat, count32, sub) }
    }

    /// The AVX2 compact [`SearchFn`](super::SearchFn).
    ///
    /// # Safety
    /// See [`SearchFn`](super::SearchFn); the CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn search_compact_avx2<const R: usize, const C: usize>(s: &EndSearch, q: u64) -> usize {
        if q < s.first {
            return 0;
        }
        let count64 = |keys: *const i64, chunks: usize, q: i64| {
            let qv = _mm256_set1_epi64x(q);
            let p = keys.cast::<__m256i>();
            let mut greater = 0;
            for j in 0..2 * chunks {
                // SAFETY: `descend_compact` passes `8 * chunks` keys inside `s.nodes`, 64-byte
                // aligned.
                let v = unsafe { _mm256_load_si256(p.add(j)) };
                greater += _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(v, qv))).count_ones() as usize;
            }
            chunks * CHUNK - greater
        };
        let splat = |t: u32| _mm256_set1_epi32(t as i32);
        let count32 = |offs: *const u32, t: __m256i| {
            let p = offs.cast::<__m256i>();
            // SAFETY: `descend_compact` passes 16 offsets inside `s.nodes`, 64-byte aligned.
            let (a, b) = unsafe { (_mm256_load_si256(p), _mm256_load_si256(p.add(1))) };
            // All ones where the offset is `<= t` (unsigned): `max(offset, t) == t`.
            let la = _mm256_cmpeq_epi32(_mm256_max_epu32(a, t), t);
            let lb = _mm256_cmpeq_epi32(_mm256_max_epu32(b, t), t);
            let ma = _mm256_movemask_ps(_mm256_castsi256_ps(la)) as u32;
            let mb = _mm256_movemask_ps(_mm256_castsi256_ps(lb)) as u32;
            (ma | mb << 8).count_ones() as usize
        };
        // SAFETY: `descend_compact` passes an offset inside `s.nodes`.
        let sub = |t: __m256i, off: *const u32| _mm256_sub_epi32(t, _mm256_set1_epi32(unsafe { *off } as i32));
        // SAFETY: the caller keeps the contract of `SearchFn`: a compact tree of this shape, and
        // `q >= s.first`.
        unsafe { descend_compact::<R, C, __m256i>(s, q, count64, splat, count32, sub) }
    }

    /// The AVX2 [`SearchFn`](super::SearchFn): 4-key compares, packed to byte masks.
    ///
    /// # Safety
    /// See [`SearchFn`](super::SearchFn); the CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn search_avx2<const R: usize, const H: usize>(s: &EndSearch, q: u64) -> usize {
        let qv = _mm256_set1_epi64x(flip(q));
        let count = |keys: *const i64, chunks: usize| {
            let p = keys.cast::<__m256i>();
            // All ones in the lanes where the key is greater than the query.
            let gt = |i: usize| {
                // SAFETY: `descend` passes `8 * chunks` keys inside `s.nodes`, 64-byte aligned.
                let v = unsafe { _mm256_load_si256(p.add(i)) };
                _mm256_cmpgt_epi64(v, qv)
            };
            let mut greater = 0;
            for j in 0..chunks / 2 {
                // 16 keys: each 64-bit lane ends as two bytes, i.e. two mask bits.
                let ab = _mm256_packs_epi32(gt(4 * j), gt(4 * j + 1));
                let cd = _mm256_packs_epi32(gt(4 * j + 2), gt(4 * j + 3));
                greater += (_mm256_movemask_epi8(_mm256_packs_epi16(ab, cd)) as u32).count_ones() as usize / 2;
            }
            if chunks % 2 == 1 {
                // 8 keys: each 64-bit lane ends as four bytes.
                let ab = _mm256_packs_epi32(gt(2 * chunks - 2), gt(2 * chunks - 1));
                greater += (_mm256_movemask_epi8(ab) as u32).count_ones() as usize / 4;
            }
            chunks * CHUNK - greater
        };
        // SAFETY: the caller keeps the contract of `SearchFn`, which implies the one of `descend`.
        unsafe { descend::<R, H>(s, count) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernels() -> Vec<Kernel> {
        let mut v = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                v.push(Kernel::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                v.push(Kernel::Avx512);
            }
        }
        v
    }

    fn check(keys: &[u64]) {
        let mut queries = vec![0, 1, u64::MAX, u64::MAX - 1, FLIP, FLIP - 1, FLIP + 1];
        for &k in keys {
            queries.extend([k, k.wrapping_sub(1), k.wrapping_add(1)]);
        }
        let layouts = |kernel| [EndSearch::compact(keys, kernel), Some(EndSearch::plain(keys, kernel))];
        for s in kernels().into_iter().flat_map(layouts).flatten() {
            let kernel = (s.kernel, s.compact);
            assert_eq!(s.len(), keys.len());
            assert_eq!(s.is_empty(), keys.is_empty());
            for &q in &queries {
                let want = keys.partition_point(|&k| k <= q);
                assert_eq!(s.upper_bound(q), want, "{kernel:?} n={} q={q}", keys.len());
                assert_eq!(s.upper_bound_binary(q), want, "binary n={} q={q}", keys.len());
            }
        }
    }

    fn sizes() -> Vec<usize> {
        let mut v: Vec<usize> = (0..=40).collect();
        for b in [B, B * FANOUT, B * FANOUT * FANOUT, B * (MAX_ROOT + 1), B * FANOUT * (MAX_ROOT + 1)] {
            for d in [b - 1, b, b + 1, 2 * b - 1, 2 * b, 2 * b + 1] {
                v.push(d);
            }
        }
        // Every width of the root, and just past it.
        for top in [2, 9, 10, 17, 18, 33, 34, 65, 66] {
            for span in [B, B * FANOUT] {
                v.extend([top * span - span, top * span - 1, top * span, top * span + 1]);
            }
        }
        // Three layers under roots of 1 to 4 chunks.
        v.extend([4, 10, 18, 33].map(|top| top * B * FANOUT * FANOUT));
        v.extend([100, 1000, 4097, 5000]);
        v
    }

    #[test]
    fn agrees_with_a_linear_scan() {
        for n in [0usize, 1, 2, 7, 16, 17, 100, 1000, 4097] {
            let keys: Vec<u64> = (0..n as u64).map(|i| i * 3 + (i % 2)).collect();
            let s = EndSearch::new(&keys);
            for q in 0..(n as u64 * 3 + 5) {
                let want = keys.iter().position(|&k| k > q).unwrap_or(n);
                assert_eq!(s.upper_bound(q), want, "n={n} q={q}");
            }
            assert_eq!(s.upper_bound(u64::MAX), n);
        }
    }

    #[test]
    fn agrees_with_partition_point_on_strictly_increasing_keys() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for n in sizes() {
            let mut end = next() % 64;
            let keys: Vec<u64> = (0..n)
                .map(|_| {
                    end += 1 + next() % 16383 + next() % 3 * (next() % 1000);
                    end
                })
                .collect();
            check(&keys);
        }
    }

    #[test]
    fn handles_duplicates_and_extreme_keys() {
        for n in sizes() {
            // Runs of equal keys, crossing node boundaries.
            let keys: Vec<u64> = (0..n as u64).map(|i| i / 7 * 10).collect();
            check(&keys);
            // Keys across the top bit and at the very end of the range.
            let keys: Vec<u64> = (0..n as u64).map(|i| (FLIP - n as u64) + 2 * i).collect();
            check(&keys);
            let keys: Vec<u64> = (0..n as u64).map(|i| u64::MAX - (n as u64 - i) / 2).collect();
            check(&keys);
            let keys: Vec<u64> = vec![u64::MAX; n];
            check(&keys);
            let keys: Vec<u64> = vec![0; n];
            check(&keys);
        }
    }

    #[test]
    fn sizes_cover_every_shape() {
        let shapes: std::collections::BTreeSet<(usize, usize)> = sizes()
            .into_iter()
            .map(|n| {
                let s = EndSearch::plain(&vec![7; n], Kernel::Scalar);
                (s.root, s.height)
            })
            .collect();
        // Only a tree of one leaf has no root.
        assert!(shapes.contains(&(0, 1)));
        for root in 1..=MAX_ROOT / CHUNK {
            for height in 1..=3 {
                assert!(shapes.contains(&(root, height)), "no test size gives root {root}, height {height}");
            }
        }
    }

    /// Keys `step` apart, with a jump of `jump` every `every` keys.
    fn jumpy(n: usize, step: u64, every: usize, jump: u64) -> Vec<u64> {
        let mut k = 5u64;
        (0..n)
            .map(|i| {
                k += step + if i % every == every - 1 { jump } else { 0 };
                k
            })
            .collect()
    }

    #[test]
    fn compact_layout_falls_back_where_offsets_do_not_fit() {
        // Leaves spanning 2^32 or more: the plain layout.
        for n in [17, 1000, 5000] {
            let keys = jumpy(n, 3, 10, 1 << 32);
            assert!(EndSearch::compact(&keys, Kernel::Scalar).is_none());
            check(&keys);
            let keys = jumpy(n, 3, 16, MAX_OFF - 200);
            assert!(EndSearch::compact(&keys, Kernel::Scalar).is_some());
            check(&keys);
        }
        // Leaves that fit, internal nodes that do not: `u64` layers above fewer compact ones.
        let mut shapes = std::collections::BTreeSet::new();
        for (n, every) in [(600, 16), (5000, 16), (5000, 256), (70_000, 256), (70_000, 4096), (9000, 300)] {
            let keys = jumpy(n, 1000, every, 1 << 31);
            let s = EndSearch::compact(&keys, Kernel::Scalar).expect("leaves fit");
            shapes.insert((s.compact, s.height, s.root > 0));
            check(&keys);
        }
        assert!(shapes.iter().any(|&(c, h, _)| c == 1 && h > 1), "{shapes:?}");
        assert!(shapes.iter().any(|&(c, h, _)| c > 1 && h > c), "{shapes:?}");
        // Near the top of the range, with duplicates.
        let keys: Vec<u64> = (0..3000u64).map(|i| u64::MAX - 3 * (2999 - i) / 4 * (1 << 20)).collect();
        assert!(EndSearch::compact(&keys, Kernel::Scalar).is_some());
        check(&keys);
    }

    /// [`check`], and queries around `2^32` past each key, where query offsets are clamped.
    fn check_far(keys: &[u64]) {
        check(keys);
        let queries: Vec<u64> = keys
            .iter()
            .flat_map(|&k| [MAX_OFF - 1, MAX_OFF, MAX_OFF + 1, MAX_OFF + 2, 1 << 33].map(|d| k.saturating_add(d)))
            .filter(|&q| q != u64::MAX)
            .collect();
        for kernel in kernels() {
            let s = EndSearch::compact(keys, kernel).expect("compact");
            for &q in &queries {
                let want = keys.partition_point(|&k| k <= q);
                assert_eq!(s.upper_bound(q), want, "{kernel:?} n={} q={q}", keys.len());
                assert_eq!(s.upper_bound_binary(q), want, "binary n={} q={q}", keys.len());
            }
        }
    }

    #[test]
    fn compact_internal_nodes_fit_every_key_under_them() {
        // Node 0 of the layer above the leaves: its offsets (up to the first key of its last
        // leaf) fit, but its last key does not, so that layer is not compact.
        let mut keys: Vec<u64> = (0..8192u64).collect();
        for k in &mut keys[255..] {
            *k += MAX_OFF - 100;
        }
        let s = EndSearch::compact(&keys, Kernel::Scalar).expect("leaves fit");
        assert_eq!(s.compact, 1, "{s:?}");
        check_far(&keys);
        // A jump that makes node 0 span exactly the largest offset: it fits, and the compact
        // layers go on.
        let mut keys: Vec<u64> = (0..8192u64).collect();
        for k in &mut keys[255..] {
            *k += MAX_OFF - 255;
        }
        let s = EndSearch::compact(&keys, Kernel::Scalar).expect("leaves fit");
        assert!(s.compact > 1, "{s:?}");
        check_far(&keys);
        // Gaps of more than `2^32` between the subtrees of the top compact layer (queries in them
        // clamp their offsets), under roots of every width.
        for (n, every) in [(2 * 256, 256), (9 * 4096, 4096), (20 * 256, 256), (33 * 256, 256), (40_000, 4096)] {
            let keys: Vec<u64> = (0..n as u64).map(|i| i * 3 + i / every * (1 << 33)).collect();
            let s = EndSearch::compact(&keys, Kernel::Scalar).expect("leaves fit");
            assert_eq!(s.compact > 1, n > MAX_ROOT * CB, "{s:?}");
            check_far(&keys);
        }
    }

    #[test]
    fn compact_layout_covers_every_shape() {
        let mut shapes = std::collections::BTreeSet::new();
        for n in sizes().into_iter().chain([16 * 32 * 16, 16 * 33 * 16 + 1, 16 * 16 * 33]) {
            if let Some(s) = EndSearch::compact(&vec![7; n], Kernel::Scalar) {
                shapes.insert((s.root, s.compact, s.height));
            }
        }
        assert!(shapes.contains(&(0, 1, 1)), "{shapes:?}");
        for root in 1..=MAX_ROOT / CHUNK {
            assert!(shapes.iter().any(|&(r, c, _)| r == root && c == 1), "{shapes:?}");
            assert!(shapes.iter().any(|&(r, c, _)| r == root && c == 2), "{shapes:?}");
        }
        assert!(shapes.iter().any(|&(_, c, _)| c == 3), "{shapes:?}");
    }

    #[test]
    fn large_trees_and_their_clones_agree() {
        // Large enough for the compact layout in huge pages.
        let keys = jumpy(COMPACT_MIN + 12345, 7, 5, 1000);
        let s = EndSearch::new(&keys);
        assert!(s.compact > 0);
        let c = s.clone();
        for q in (0..keys[keys.len() - 1] + 20).step_by(997).chain([0, 5, 12, u64::MAX, u64::MAX - 1]) {
            let want = keys.partition_point(|&k| k <= q);
            assert_eq!(s.upper_bound(q), want, "q={q}");
            assert_eq!(c.upper_bound(q), want, "clone q={q}");
            assert_eq!(c.upper_bound_binary(q), want, "binary q={q}");
        }
        for &k in keys.iter().step_by(101) {
            assert_eq!(s.upper_bound(k), keys.partition_point(|&x| x <= k));
        }
    }

    #[test]
    fn default_is_empty() {
        let s = EndSearch::default();
        assert!(s.is_empty());
        assert_eq!(s.upper_bound(0), 0);
        assert_eq!(s.upper_bound(u64::MAX), 0);
        assert_eq!(s.upper_bound_binary(5), 0);
        assert!(format!("{s:?}").contains("len: 0"));
    }

    #[test]
    fn memory_stays_close_to_the_keys() {
        let keys: Vec<u64> = (0..100_000u64).map(|i| i * 8).collect();
        for s in [EndSearch::new(&keys), EndSearch::compact(&keys, Kernel::Scalar).unwrap()] {
            assert!(s.nodes.layout.size() + s.leaf_first.len() * 8 < keys.len() * 8 * 12 / 10);
        }
        let keys: Vec<u64> = (0..2 * COMPACT_MIN as u64).map(|i| i * 8).collect();
        let s = EndSearch::new(&keys);
        assert!(s.compact > 0);
        assert!(s.nodes.layout.size() + s.leaf_first.len() * 8 < keys.len() * 8 * 12 / 10);
    }
}
