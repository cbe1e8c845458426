//! From records to reads: a trace is checked against the stack it is replayed on, then its
//! reads are coalesced, in recorded order, into reads of at most [`MAX_READ`] bytes.

use super::file::Record;
use crate::error::TraceProblem;
use crate::lsmt::{CommittedLayer, HEADER_SIZE};

/// Largest read a prefetch worker issues.
pub const MAX_READ: u64 = 1 << 20;

/// One read of a prefetch: `len` bytes at `offset` of lower `layer`'s source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    /// Lower layer number.
    pub layer: usize,
    /// First byte in the layer's LSMT file view.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Records this read completes.
    pub records: usize,
}

/// The data area of a layer: bytes `4096..index offset` (and within the source).
pub fn data_area(layer: &CommittedLayer) -> (u64, u64) {
    let size = layer.source().size();
    let io = layer.trailer().index_offset;
    let limit = if io >= HEADER_SIZE { io.min(size) } else { size.saturating_sub(HEADER_SIZE) };
    (HEADER_SIZE, limit)
}

/// Checks every record against `lowers`: a known operation, an existing layer, a range inside
/// that layer's data area.
pub fn validate(records: &[Record], lowers: &[CommittedLayer]) -> Result<(), TraceProblem> {
    let areas: Vec<(u64, u64)> = lowers.iter().map(data_area).collect();
    for (i, r) in records.iter().enumerate() {
        if r.op != b'R' && r.op != b'W' {
            return Err(TraceProblem::BadOp { record: i, op: r.op });
        }
        let Some(&(start, limit)) = areas.get(r.layer as usize) else {
            return Err(TraceProblem::LayerOutOfRange { record: i, layer: r.layer, layers: lowers.len() });
        };
        let end = r.offset.saturating_add(r.count);
        if r.offset < start || end > limit {
            return Err(TraceProblem::OutsideDataArea {
                record: i,
                layer: r.layer,
                offset: r.offset,
                end,
                start,
                limit,
            });
        }
    }
    Ok(())
}

/// The reads of `records` (the `R` ones), in order: a record that continues (or lies within)
/// the read before it on the same layer joins it while the read stays within [`MAX_READ`];
/// longer records are split. Each record is counted on the read where it starts.
pub fn coalesce(records: &[Record]) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    for r in records.iter().filter(|r| r.op == b'R' && r.count > 0) {
        let layer = r.layer as usize;
        let (mut off, end) = (r.offset, r.offset.saturating_add(r.count));
        let mut counted = false;
        if let Some(j) = jobs.last_mut() {
            let j_end = j.offset + j.len;
            if j.layer == layer && off >= j.offset && off <= j_end {
                if end <= j_end {
                    j.records += 1;
                    continue;
                }
                let room = MAX_READ.saturating_sub(j.len);
                if room > 0 {
                    j.len += (end - j_end).min(room);
                    j.records += 1;
                    counted = true;
                }
                off = j_end.max(j.offset + j.len);
            }
        }
        while off < end {
            let len = (end - off).min(MAX_READ);
            jobs.push(Job { layer, offset: off, len, records: usize::from(!counted) });
            counted = true;
            off += len;
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_reads_join_up_to_the_limit() {
        let r = |l, o, c| Record::read(l, o, c);
        let jobs = coalesce(&[r(0, 4096, 4096), r(0, 8192, 4096), r(1, 12288, 512), r(0, 12288, 4096)]);
        assert_eq!(
            jobs,
            vec![
                Job { layer: 0, offset: 4096, len: 8192, records: 2 },
                Job { layer: 1, offset: 12288, len: 512, records: 1 },
                Job { layer: 0, offset: 12288, len: 4096, records: 1 },
            ]
        );
        // a long record is split; what follows continues the last piece
        let jobs = coalesce(&[r(0, 0, MAX_READ * 2 + 10), r(0, MAX_READ * 2 + 10, 6)]);
        assert_eq!(jobs.iter().map(|j| j.len).collect::<Vec<_>>(), vec![MAX_READ, MAX_READ, 16]);
        assert_eq!(jobs.iter().map(|j| j.records).sum::<usize>(), 2);
        // contained reads add nothing; a full read is not extended
        let jobs = coalesce(&[r(0, 0, MAX_READ), r(0, 100, 10), r(0, MAX_READ, 10)]);
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs.iter().map(|j| j.records).collect::<Vec<_>>(), vec![2, 1]);
        // writes are not prefetched
        assert!(coalesce(&[Record { op: b'W', layer: 0, count: 10, offset: 4096 }]).is_empty());
    }
}
