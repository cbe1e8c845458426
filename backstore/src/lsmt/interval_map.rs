//! The mutable index of a writable layer: non-overlapping entries where a newer insert replaces
//! whatever part of older entries it covers (spec §3.7, log replay).

use std::collections::BTreeMap;

use super::index::Piece;
use super::segment::Segment;

/// Non-overlapping entries keyed by their first sector.
#[derive(Clone, Debug, Default)]
pub struct IntervalMap {
    map: BTreeMap<u64, Segment>,
}

impl IntervalMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts `seg`, trimming or splitting the older entries it overlaps. A trimmed data entry
    /// advances its `moffset` by the trimmed amount; a zeroed entry keeps it.
    pub fn insert(&mut self, seg: Segment) {
        if seg.length == 0 {
            return;
        }
        let (start, end) = (seg.offset, seg.end());
        // An entry starting before `start` may overlap from the left.
        if let Some((&k, &left)) = self.map.range(..start).next_back() {
            if left.end() > start {
                self.map.insert(k, left.slice(left.offset, start));
                if left.end() > end {
                    self.map.insert(end, left.slice(end, left.end()));
                }
            }
        }
        // Entries starting inside [start, end).
        let inside: Vec<u64> = self.map.range(start..end).map(|(&k, _)| k).collect();
        for k in inside {
            let s = self.map.remove(&k).expect("key just listed");
            if s.end() > end {
                self.map.insert(end, s.slice(end, s.end()));
            }
        }
        self.map.insert(start, seg);
    }

    /// All entries in LBA order.
    pub fn segments(&self) -> Vec<Segment> {
        self.map.values().copied().collect()
    }

    /// Iterates over the entries in LBA order.
    pub fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.map.values()
    }

    /// The parts of sectors `start..end`, in order.
    pub fn pieces(&self, start: u64, end: u64, out: &mut Vec<Piece>) {
        let mut pos = start;
        let first = match self.map.range(..=start).next_back() {
            Some((_, s)) if s.end() > start => s.offset,
            _ => start,
        };
        for s in self.map.range(first..end).map(|(_, s)| s) {
            if s.offset > pos {
                out.push(Piece::Hole { start: pos, end: s.offset });
            }
            let p = s.slice(pos.max(s.offset), end);
            pos = p.end();
            out.push(Piece::Mapped(p));
        }
        if pos < end {
            out.push(Piece::Hole { start: pos, end });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_against_a_model() {
        let mut rng = 12345u64;
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            rng >> 33
        };
        let size = 300u64;
        let mut m = IntervalMap::new();
        let mut model: Vec<Option<(bool, u64)>> = vec![None; size as usize];
        for i in 0..2000u64 {
            let off = next() % (size - 1);
            let len = 1 + next() % (size - off).min(40);
            let zeroed = next() % 5 == 0;
            let mo = 8 + i * 50;
            m.insert(Segment { offset: off, length: len as u32, moffset: mo, zeroed, tag: 0 });
            for lba in off..off + len {
                model[lba as usize] = Some((zeroed, if zeroed { mo } else { mo + lba - off }));
            }
            if i % 97 == 0 {
                let mut pieces = vec![];
                m.pieces(0, size, &mut pieces);
                let mut got = vec![None; size as usize];
                for p in pieces {
                    if let Piece::Mapped(s) = p {
                        for lba in s.offset..s.end() {
                            got[lba as usize] =
                                Some((s.zeroed, if s.zeroed { s.moffset } else { s.moffset + lba - s.offset }));
                        }
                    }
                }
                assert_eq!(got, model);
                let segs = m.segments();
                super::super::index::check_sorted(&segs).unwrap();
            }
        }
    }
}
