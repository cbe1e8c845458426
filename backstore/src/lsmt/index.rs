//! Sorted, read-only LSMT indexes: lookup of a sector range, validation, and the merge of a
//! stack of layers into one index (top wins, zeroed entries hide what is below).

use super::search::EndSearch;
use super::segment::Segment;
use super::{MAX_LAYERS, MAX_MERGED_ENTRIES};
use crate::{Error, Result};

/// A part of a looked-up sector range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Sectors covered by an entry (already cut to the range).
    Mapped(Segment),
    /// Sectors `start..end` no entry covers.
    Hole {
        /// First sector.
        start: u64,
        /// One past the last sector.
        end: u64,
    },
}

/// Entries sorted by offset and non-overlapping, with a fast search structure.
#[derive(Clone, Debug, Default)]
pub struct SortedIndex {
    segs: Vec<Segment>,
    search: EndSearch,
}

impl SortedIndex {
    /// Builds the index; `segs` must satisfy [`check_sorted`].
    pub fn new(segs: Vec<Segment>) -> Self {
        let ends: Vec<u64> = segs.iter().map(Segment::end).collect();
        SortedIndex { search: EndSearch::new(&ends), segs }
    }

    /// The entries, in LBA order.
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// True if no entries.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Position of the first entry that ends after sector `lba`.
    #[inline]
    pub fn first_ending_after(&self, lba: u64) -> usize {
        self.search.upper_bound(lba)
    }

    /// The entry covering sector `lba`, if any.
    #[inline]
    pub fn lookup(&self, lba: u64) -> Option<&Segment> {
        let i = self.first_ending_after(lba);
        self.segs.get(i).filter(|s| s.offset <= lba)
    }

    /// Calls `f` for each part of sectors `start..end`, in order.
    pub fn for_each_piece<E>(&self, start: u64, end: u64, mut f: impl FnMut(Piece) -> Result<(), E>) -> Result<(), E> {
        let mut pos = start;
        let mut i = self.first_ending_after(start);
        while pos < end {
            match self.segs.get(i) {
                Some(s) if s.offset < end => {
                    if s.offset > pos {
                        f(Piece::Hole { start: pos, end: s.offset })?;
                    }
                    let piece = s.slice(pos, end);
                    pos = piece.end();
                    f(Piece::Mapped(piece))?;
                    i += 1;
                }
                _ => {
                    f(Piece::Hole { start: pos, end })?;
                    pos = end;
                }
            }
        }
        Ok(())
    }
}

/// Checks that entries are sorted by offset, non-overlapping and of legal length.
pub fn check_sorted(segs: &[Segment]) -> std::result::Result<(), String> {
    for (i, s) in segs.iter().enumerate() {
        if s.length == 0 {
            return Err(format!("index entry {i} has length 0"));
        }
        if i > 0 && segs[i - 1].end() > s.offset {
            let p = &segs[i - 1];
            return Err(format!(
                "index entries {} (sectors {}..{}) and {i} (sectors {}..{}) are unsorted or overlap",
                i - 1,
                p.offset,
                p.end(),
                s.offset,
                s.end()
            ));
        }
    }
    Ok(())
}

/// Merges the indexes of a stack of read-only layers, **bottom first**, into one index whose
/// `tag` is the layer number (0 = bottom). A sector takes the entry of the topmost layer that
/// maps it; zeroed entries are kept, so they hide lower data.
pub fn merge_layers(layers: &[&[Segment]]) -> Result<Vec<Segment>> {
    if layers.len() > MAX_LAYERS {
        return Err(Error::Limit {
            what: "layers in a stack".into(),
            value: layers.len() as u64,
            limit: MAX_LAYERS as u64,
        });
    }
    let mut merged: Vec<Segment> = Vec::new();
    for (n, layer) in layers.iter().enumerate().rev() {
        let tagged = layer.iter().map(|s| Segment { tag: n as u8, ..*s });
        if merged.is_empty() {
            merged = tagged.collect();
        } else {
            merged = fill_holes(&merged, tagged);
        }
        if merged.len() as u64 > MAX_MERGED_ENTRIES {
            return Err(Error::Limit {
                what: "entries of the merged index".into(),
                value: merged.len() as u64,
                limit: MAX_MERGED_ENTRIES,
            });
        }
    }
    Ok(merged)
}

/// `upper` plus the parts of `lower` that `upper` does not cover, in order.
fn fill_holes(upper: &[Segment], lower: impl Iterator<Item = Segment>) -> Vec<Segment> {
    let mut out = Vec::with_capacity(upper.len());
    let mut u = 0; // next upper entry not yet emitted
    for l in lower {
        let mut pos = l.offset;
        let end = l.end();
        // Emit upper entries that start before this lower piece's current position.
        while u < upper.len() && upper[u].offset < end {
            let up = upper[u];
            if up.end() <= pos {
                out.push(up);
                u += 1;
                continue;
            }
            if up.offset > pos {
                out.push(l.slice(pos, up.offset));
            }
            pos = pos.max(up.end());
            if up.end() <= end {
                out.push(up);
                u += 1;
            } else {
                break; // up continues past this lower entry; emit it later
            }
            if pos >= end {
                break;
            }
        }
        if pos < end && (u >= upper.len() || upper[u].offset >= end) {
            out.push(l.slice(pos, end));
        }
    }
    out.extend_from_slice(&upper[u..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-per-sector model of a stack: 0 = unmapped, 1+ = (layer, zeroed) code.
    fn model(layers: &[Vec<Segment>], size: usize) -> Vec<Option<(u8, bool, u64)>> {
        let mut m = vec![None; size];
        for (n, l) in layers.iter().enumerate() {
            for s in l {
                for lba in s.offset..s.end() {
                    let mo = if s.zeroed { s.moffset } else { s.moffset + lba - s.offset };
                    m[lba as usize] = Some((n as u8, s.zeroed, mo));
                }
            }
        }
        m
    }

    fn random_layer(rng: &mut u64, size: u64, n: usize) -> Vec<Segment> {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let mut out = vec![];
        let mut pos = next() % 8;
        for _ in 0..n {
            let len = 1 + next() % 12;
            if pos + len > size {
                break;
            }
            let s = if next() % 4 == 0 {
                Segment::zeroed(pos, len as u32, 8)
            } else {
                Segment::data(pos, len as u32, 8 + next() % 1000)
            };
            out.push(s);
            pos += len + next() % 10;
        }
        out
    }

    #[test]
    fn merge_matches_the_model() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..300 {
            let size = 200;
            let layers: Vec<Vec<Segment>> = (0..1 + round % 5).map(|_| random_layer(&mut rng, size, 30)).collect();
            let refs: Vec<&[Segment]> = layers.iter().map(|l| l.as_slice()).collect();
            let merged = merge_layers(&refs).unwrap();
            check_sorted(&merged).unwrap();
            let want = model(&layers, size as usize);
            let idx = SortedIndex::new(merged);
            for lba in 0..size {
                let got = idx
                    .lookup(lba)
                    .map(|s| (s.tag, s.zeroed, if s.zeroed { s.moffset } else { s.moffset + lba - s.offset }));
                assert_eq!(got, want[lba as usize], "round {round} lba {lba}");
            }
            // for_each_piece covers the range exactly, in order
            let mut pos = 13;
            idx.for_each_piece(13, 177, |p| {
                let (s, e) = match p {
                    Piece::Mapped(s) => (s.offset, s.end()),
                    Piece::Hole { start, end } => (start, end),
                };
                assert_eq!(s, pos);
                assert!(e > s);
                pos = e;
                Ok::<_, ()>(())
            })
            .unwrap();
            assert_eq!(pos, 177);
        }
    }
}
