//! The merged view of a stack of layers: N read-only lowers (bottom first) and an optional
//! writable upper, served as one [`BlockDevice`] (spec §3.9).
//!
//! A sector is decided by the topmost layer that maps it: a data entry gives its bytes, a zeroed
//! entry gives zeros and hides everything below, and a sector no layer maps reads as zeros.
//! The lowers' indexes are merged once at open (tag = layer number); the upper's live index is
//! consulted first on every read.
//!
//! A stack can record its lowers' reads into a trace ([`Recorder`]) or run a prefetch
//! ([`Prefetcher`]) whose workers yield to its on-demand reads; both end when it is dropped
//! (see [`crate::trace`]).

use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::block::BlockDevice;
use crate::detect::open_layer_file;
use crate::lsmt::index::{merge_layers, Piece, SortedIndex};
use crate::lsmt::writable::{Kind, Recovery};
use crate::lsmt::{CommittedLayer, Segment, WritableLayer};
use crate::trace::gate::Gate;
use crate::trace::{PrefetchProgress, PrefetchStats, Prefetcher, Recorder};
use crate::{Error, Result, SECTOR};

/// A stack of layers.
pub struct Stack {
    lowers: Vec<CommittedLayer>,
    merged: SortedIndex,
    upper: Option<WritableLayer>,
    size: u64,
    /// Partial-block writes to a sparse upper are read-modify-write: they hold this exclusively,
    /// other writes hold it shared.
    rmw: RwLock<()>,
    /// Counts on-demand lower reads in flight while a prefetch runs.
    gate: Arc<Gate>,
    /// The running prefetch (trace replay), cancelled and joined on drop.
    prefetch: Option<Prefetcher>,
    /// The trace being recorded, dumped on drop.
    recorder: Option<Recorder>,
}

impl Stack {
    /// Stacks `lowers` (bottom first) under an optional writable `upper`. An upper with a
    /// virtual size of 0 takes the lowers' size, written back to its headers.
    pub fn new(lowers: Vec<CommittedLayer>, upper: Option<WritableLayer>) -> Result<Self> {
        let indexes: Vec<&[Segment]> = lowers.iter().map(|l| l.index().segments()).collect();
        let merged = SortedIndex::new(merge_layers(&indexes)?);
        for w in lowers.windows(2) {
            if w[1].trailer().parent_uuid != w[0].trailer().uuid {
                tracing::warn!(layer = w[1].source().name(), parent = %w[1].trailer().parent_uuid, below = %w[0].trailer().uuid,
                    "parent uuid of a layer does not match the uuid of the layer below");
            }
        }
        let lower_size = lowers.iter().rev().map(|l| l.virtual_size()).find(|&v| v != 0).unwrap_or(0);
        let size = match &upper {
            Some(u) => {
                if u.virtual_size() == 0 && lower_size != 0 {
                    u.set_virtual_size(lower_size)?;
                }
                u.virtual_size()
            }
            None => lower_size,
        };
        Ok(Stack {
            lowers,
            merged,
            upper,
            size,
            rmw: RwLock::new(()),
            gate: Arc::default(),
            prefetch: None,
            recorder: None,
        })
    }

    /// Opens local layer files (any wrapping) and an optional writable layer (data, index).
    pub fn open_files(lowers: &[impl AsRef<Path>], upper: Option<(&Path, &Path)>) -> Result<Self> {
        let lowers = lowers.iter().map(open_layer_file).collect::<Result<Vec<_>>>()?;
        let upper = upper.map(|(d, i)| WritableLayer::open(d, i, true, Recovery::RollBack)).transpose()?;
        Self::new(lowers, upper)
    }

    /// The read-only layers, bottom first.
    pub fn lowers(&self) -> &[CommittedLayer] {
        &self.lowers
    }

    /// The writable layer, if any.
    pub fn upper(&self) -> Option<&WritableLayer> {
        self.upper.as_ref()
    }

    /// The merged index of the lowers (tag = layer number).
    pub fn merged_index(&self) -> &SortedIndex {
        &self.merged
    }

    /// Takes the writable layer out (to seal or commit it).
    pub fn into_upper(mut self) -> Option<WritableLayer> {
        self.upper.take()
    }

    /// Records the lowers' reads into `r` from now on (record mode); `r` dumps the trace when
    /// the stack is dropped.
    pub fn set_recorder(&mut self, r: Recorder) {
        self.recorder = Some(r);
    }

    /// The recording, if the stack records its reads.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    /// Runs `p` while the stack lives: its workers yield to on-demand reads and are cancelled
    /// and joined when the stack is dropped (or another prefetch replaces it).
    pub fn set_prefetcher(&mut self, p: Prefetcher) {
        self.prefetch = Some(p);
    }

    /// The counter of on-demand lower reads that prefetch workers yield to.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// What the prefetch has done, if one was started.
    pub fn prefetch_stats(&self) -> Option<PrefetchStats> {
        self.prefetch.as_ref().map(|p| p.progress().stats())
    }

    /// The prefetch's live counters (they stay readable after the stack is dropped).
    pub fn prefetch_progress(&self) -> Option<Arc<PrefetchProgress>> {
        self.prefetch.as_ref().map(|p| p.progress().clone())
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
            return Err(Error::Unaligned { offset, len });
        }
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Error::OutOfRange { offset, len, size: self.size });
        }
        Ok(())
    }

    /// Reads sectors `start..` of the lowers into `buf`.
    fn read_lowers(&self, buf: &mut [u8], start: u64) -> Result<()> {
        let end = start + buf.len() as u64 / SECTOR;
        let _foreground = self.prefetch.as_ref().map(|_| self.gate.enter());
        self.merged.for_each_piece(start, end, |p| match p {
            Piece::Mapped(s) => {
                let out = &mut buf[((s.offset - start) * SECTOR) as usize..((s.end() - start) * SECTOR) as usize];
                if let (Some(r), false) = (&self.recorder, s.zeroed) {
                    r.record(s.tag as u32, s.moffset * SECTOR, s.length as u64 * SECTOR);
                }
                self.lowers[s.tag as usize].read_segment(&s, out)
            }
            Piece::Hole { start: s, end: e } => {
                buf[((s - start) * SECTOR) as usize..((e - start) * SECTOR) as usize].fill(0);
                Ok(())
            }
        })
    }

    /// True if any lower maps data (not zeroed) in sectors `start..end`.
    fn lowers_have_data(&self, start: u64, end: u64) -> bool {
        let mut found = false;
        let _ = self.merged.for_each_piece(start, end, |p| {
            if let Piece::Mapped(s) = p {
                found |= !s.zeroed;
            }
            Ok::<_, ()>(())
        });
        found
    }
}

impl Drop for Stack {
    /// The prefetch stops (its workers joined) before the recording is dumped.
    fn drop(&mut self) {
        drop(self.prefetch.take());
        drop(self.recorder.take());
    }
}

impl BlockDevice for Stack {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.upper.is_none()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        let start = offset / SECTOR;
        let Some(upper) = &self.upper else {
            return self.read_lowers(buf, start);
        };
        let mut pieces = Vec::new();
        upper.pieces(start, start + buf.len() as u64 / SECTOR, &mut pieces);
        for p in pieces {
            match p {
                Piece::Mapped(s) => {
                    let out = &mut buf[((s.offset - start) * SECTOR) as usize..((s.end() - start) * SECTOR) as usize];
                    upper.read_segment(&s, out)?;
                }
                Piece::Hole { start: s, end: e } => {
                    self.read_lowers(&mut buf[((s - start) * SECTOR) as usize..((e - start) * SECTOR) as usize], s)?;
                }
            }
        }
        Ok(())
    }

    /// A write to a sparse upper that covers file system blocks only partly is widened to
    /// whole blocks filled from the current view, because after a reopen the whole block is
    /// mapped from the upper: the sectors not written must hold what the lowers had.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let upper = self.upper.as_ref().ok_or(Error::ReadOnly)?;
        self.check(offset, buf.len() as u64)?;
        let unit = upper.alloc_unit();
        let end = offset + buf.len() as u64;
        if unit <= SECTOR || (offset.is_multiple_of(unit) && (end.is_multiple_of(unit) || end == self.size)) {
            let _shared = self.rmw.read().expect("rmw lock");
            return upper.write_at(buf, offset);
        }
        let _exclusive = self.rmw.write().expect("rmw lock");
        let (a, b) = (offset / unit * unit, end.div_ceil(unit).saturating_mul(unit).min(self.size));
        let mut block = vec![0u8; (b - a) as usize];
        self.read_at(&mut block, a)?;
        block[(offset - a) as usize..(end - a) as usize].copy_from_slice(buf);
        upper.write_at(&block, a)
    }

    /// In a sparse upper, a punched hole would let lower data show through after a reopen, so
    /// where a lower layer has data the range is written with zeros instead.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let upper = self.upper.as_ref().ok_or(Error::ReadOnly)?;
        self.check(offset, len)?;
        if upper.kind() != Kind::Sparse {
            return upper.discard(offset, len);
        }
        const ZEROS: usize = 1 << 20;
        let zeros = vec![0u8; ZEROS];
        let (start, end) = (offset / SECTOR, (offset + len) / SECTOR);
        let mut pieces = Vec::new();
        self.merged.for_each_piece(start, end, |p| {
            pieces.push(p);
            Ok::<_, Error>(())
        })?;
        for p in pieces {
            let (s, e, shadowed) = match p {
                // pieces of the merged lower index: a data piece is lower data under the range
                Piece::Mapped(s) => (s.offset, s.end(), !s.zeroed),
                Piece::Hole { start, end } => (start, end, false),
            };
            if shadowed {
                let mut pos = s * SECTOR;
                while pos < e * SECTOR {
                    let n = (e * SECTOR - pos).min(ZEROS as u64) as usize;
                    self.write_at(&zeros[..n], pos)?;
                    pos += n as u64;
                }
            } else {
                upper.discard(s * SECTOR, (e - s) * SECTOR)?;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        match &self.upper {
            Some(u) => u.flush(),
            None => Ok(()),
        }
    }
}

impl Stack {
    /// True if bytes `offset..offset+len` read as zeros without touching any file: no layer
    /// maps them, or only zeroed entries do.
    pub fn reads_zeros(&self, offset: u64, len: u64) -> bool {
        let (start, end) = (offset / SECTOR, (offset + len).div_ceil(SECTOR));
        let mut holes = Vec::new();
        match &self.upper {
            Some(u) => {
                let mut pieces = Vec::new();
                u.pieces(start, end, &mut pieces);
                for p in pieces {
                    match p {
                        Piece::Mapped(s) if !s.zeroed => return false,
                        Piece::Mapped(_) => {}
                        Piece::Hole { start, end } => holes.push((start, end)),
                    }
                }
            }
            None => holes.push((start, end)),
        }
        holes.into_iter().all(|(s, e)| !self.lowers_have_data(s, e))
    }
}
