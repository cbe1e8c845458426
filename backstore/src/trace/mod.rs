//! Trace-based prefetch for cold starts (spec §8 `recordTracePath` / `accelerationLayer`, §11).
//!
//! * [`file`]: the trace file format (encoder, decoder);
//! * [`record`]: record mode, the lower-layer reads of a device dumped when it closes or when
//!   `<path>.lock` is removed;
//! * [`plan`]: checks of a trace against a stack, and the coalesced reads to prefetch;
//! * [`gate`]: on-demand reads go first;
//! * [`prefetch`]: the worker threads that replay the reads;
//! * [`priority`]: a priority list (absolute file paths) resolved to layer ranges through the
//!   ext4 on the stack.
//!
//! What a `recordTracePath` file means is decided by its content ([`mode`]): empty = record,
//! the trace magic = replay, anything else = a priority list. A trace that cannot be used is
//! logged (one warning with the path and the reason) and ignored: the device opens and reads
//! as it would without it.

pub mod file;
pub mod gate;
pub mod plan;
pub mod prefetch;
pub mod priority;
pub mod record;

use std::io::Read;
use std::path::Path;

pub use file::Record;
pub use prefetch::{PrefetchProgress, PrefetchStats, Prefetcher};
pub use record::Recorder;

use crate::stack::Stack;
use crate::{Error, Result};

/// Workers of a prefetch when no global config says otherwise (`prefetchConfig.concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 16;

/// What a trace path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An empty file: record the device's lower reads into it.
    Record,
    /// A file starting with the trace magic: replay it.
    Replay,
    /// Any other content: a list of absolute file paths to prefetch.
    PriorityList,
}

/// The mode `path` asks for; `Ok(None)` if it does not exist.
pub fn mode(path: &Path) -> Result<Option<Mode>> {
    let shown = || path.display().to_string();
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(shown(), "open the trace", e)),
    };
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(shown(), "read the trace", e)),
        }
    }
    Ok(Some(match n {
        0 => Mode::Record,
        _ if file::has_magic(&head[..n]) => Mode::Replay,
        _ => Mode::PriorityList,
    }))
}

/// True if `path` is set and names an empty file (record mode: background download is off).
pub fn is_record_path(path: &str) -> bool {
    !path.is_empty() && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// Reads and checks the trace at `path` against `stack`; the prefetch it asks for.
pub fn plan_trace(path: &Path, stack: &Stack) -> Result<(Vec<plan::Job>, usize)> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(&shown, "read the trace", e))?;
    let records = file::decode(&bytes).map_err(|problem| Error::Trace { file: shown.clone(), problem })?;
    plan::validate(&records, stack.lowers()).map_err(|problem| Error::Trace { file: shown, problem })?;
    let n = records.iter().filter(|r| r.op == b'R').count();
    Ok((plan::coalesce(&records), n))
}

/// Sets up what `path` asks for on `stack`: recording, or a prefetch (of a trace or a priority
/// list) with `concurrency` workers. With `record_allowed` false (an acceleration layer's
/// trace) an empty file means nothing. Problems are logged, never returned: the device works
/// without a trace.
pub fn attach(stack: &mut Stack, path: &Path, record_allowed: bool, concurrency: usize) {
    let warn = |e: &dyn std::fmt::Display| {
        tracing::warn!(path = %path.display(), reason = %e, "trace ignored: no prefetch");
    };
    let m = match mode(path) {
        Ok(Some(m)) => m,
        Ok(None) => {
            tracing::debug!(path = %path.display(), "no trace file");
            return;
        }
        Err(e) => return warn(&e),
    };
    let planned: Result<prefetch::Plan> = match m {
        Mode::Record if record_allowed => {
            match Recorder::start(path) {
                Ok(r) => stack.set_recorder(r),
                Err(e) => tracing::warn!(path = %path.display(), reason = %e, "cannot record a trace"),
            }
            return;
        }
        Mode::Record => return,
        Mode::Replay => plan_trace(path, stack).map(|(jobs, n)| -> prefetch::Plan { Box::new(move |_| Ok((jobs, n))) }),
        Mode::PriorityList => priority::plan_list(path, stack),
    };
    match planned {
        Ok(plan) => {
            let sources = stack.lowers().iter().map(|l| l.source().clone()).collect();
            let p = Prefetcher::start(&path.display().to_string(), plan, sources, stack.gate(), concurrency);
            stack.set_prefetcher(p);
        }
        Err(e) => warn(&e),
    }
}
