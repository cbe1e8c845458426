//! Lookup of the first index entry that ends after a sector: the hot path of every read.
//!
//! Keys are the entries' end sectors, sorted ascending; `upper_bound(lba)` is the position of
//! the first key greater than `lba`, i.e. the first entry that may cover `lba`.

/// A static search structure over sorted `u64` keys.
#[derive(Clone, Debug, Default)]
pub struct EndSearch {
    keys: Vec<u64>,
}

impl EndSearch {
    /// Builds the structure over `keys`, which must be sorted ascending.
    pub fn new(keys: &[u64]) -> Self {
        debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        EndSearch { keys: keys.to_vec() }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Index of the first key `> key` (`len()` if none).
    #[inline]
    pub fn upper_bound(&self, key: u64) -> usize {
        self.keys.partition_point(|&k| k <= key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
