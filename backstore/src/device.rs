//! Opening a device from its per-device `config.v1.json` (spec §8): the lower layers through a
//! [`LayerSource`], the optional writable upper, the trace (`recordTracePath`, or an
//! acceleration layer's `trace`: see [`crate::trace`]) and the `resultFile` report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use config::{DeviceConfig, LowerLayer};

use crate::detect::open_layer;
use crate::io::{LocalFile, ReadAt};
use crate::lsmt::writable::Recovery;
use crate::lsmt::{CommittedLayer, WritableLayer};
use crate::stack::Stack;
use crate::{Error, Result};

/// Where the blob of a lower layer comes from. Local files now; the remote (registry) source
/// implements the same trait.
pub trait LayerSource: Send + Sync {
    /// The blob of `layer` (lower number `index` of `cfg`), in any wrapping.
    fn open(&self, cfg: &DeviceConfig, index: usize, layer: &LowerLayer) -> Result<Arc<dyn ReadAt>>;

    /// Worker threads of a trace prefetch (the global `prefetchConfig.concurrency`).
    fn prefetch_concurrency(&self) -> usize {
        crate::trace::DEFAULT_CONCURRENCY
    }
}

/// Lower layers from local files only: `file`, or `dir/overlaybd.commit`, `dir/.commit`,
/// `dir/overlaybd.sealed`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalSource;

impl LayerSource for LocalSource {
    fn open(&self, _cfg: &DeviceConfig, index: usize, layer: &LowerLayer) -> Result<Arc<dyn ReadAt>> {
        if !layer.target_file.is_empty() || !layer.target_digest.is_empty() {
            return Err(Error::InvalidArgument(format!("lower {index}: turboOCI layers are not supported")));
        }
        match layer.local_path() {
            Some(p) => Ok(Arc::new(LocalFile::open(p)?)),
            None if !layer.digest.is_empty() => Err(Error::InvalidArgument(format!(
                "lower {index} ({}) has no local file and this build reads no remote layers",
                layer.digest
            ))),
            None => Err(Error::InvalidArgument(format!(
                "lower {index}: no `file`, and `dir` {:?} holds no overlaybd.commit, .commit or overlaybd.sealed",
                layer.dir
            ))),
        }
    }
}

/// Opens the stack a config describes, with ZFile block CRCs verified on every read.
///
/// `accelerationLayer`: the last lower is not a layer; `<its dir>/trace` is replayed if it
/// is there. `recordTracePath`: an empty file records the lowers' reads, a trace is replayed,
/// other content is a priority list. A trace that cannot be used is logged and ignored.
pub fn open_config(cfg: &DeviceConfig, source: &dyn LayerSource) -> Result<Stack> {
    if cfg.acceleration_layer && !cfg.record_trace_path.is_empty() {
        return Err(Error::InvalidArgument("accelerationLayer and recordTracePath cannot be combined".into()));
    }
    if !cfg.upper.target.is_empty() || !cfg.upper.gzip_index.is_empty() {
        return Err(Error::InvalidArgument("turboOCI upper layers are not supported".into()));
    }
    let mut layers_cfg = cfg.clone();
    let mut trace: Option<(PathBuf, bool)> =
        (!cfg.record_trace_path.is_empty()).then(|| (PathBuf::from(&cfg.record_trace_path), true));
    if cfg.acceleration_layer {
        let Some(accel) = layers_cfg.lowers.pop() else {
            return Err(Error::InvalidArgument("accelerationLayer is set but there are no lowers".into()));
        };
        if accel.dir.is_empty() {
            tracing::warn!("the acceleration layer has no dir: no trace to replay");
        } else {
            trace = Some((Path::new(&accel.dir).join("trace"), false));
        }
    }
    let lowers = open_lowers(&layers_cfg, source)?;
    let upper = if cfg.upper.is_empty() {
        None
    } else {
        Some(WritableLayer::open(Path::new(&cfg.upper.data), Path::new(&cfg.upper.index), true, Recovery::RollBack)?)
    };
    let mut stack = Stack::new(lowers, upper)?;
    if let Some((path, record_allowed)) = trace {
        crate::trace::attach(&mut stack, &path, record_allowed, source.prefetch_concurrency());
    }
    Ok(stack)
}

/// Opens the lowers, several at a time (opening a remote layer is mostly waiting).
fn open_lowers(cfg: &DeviceConfig, source: &dyn LayerSource) -> Result<Vec<CommittedLayer>> {
    const PARALLEL: usize = 32;
    let mut out = Vec::with_capacity(cfg.lowers.len());
    for (chunk_no, chunk) in cfg.lowers.chunks(PARALLEL).enumerate() {
        let opened: Vec<Result<CommittedLayer>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(k, l)| {
                    let i = chunk_no * PARALLEL + k;
                    s.spawn(move || open_layer(source.open(cfg, i, l)?, true))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::InvalidArgument("layer open panicked".into()))))
                .collect()
        });
        for r in opened {
            out.push(r?);
        }
    }
    Ok(out)
}

/// Loads `config_path`, opens its stack and writes `success` or `failed:<reason>` into its
/// `resultFile` (if it names one), as the reference does.
pub fn open_device(config_path: &Path, source: &dyn LayerSource) -> Result<Stack> {
    let cfg = DeviceConfig::load(config_path).map_err(|e| Error::InvalidArgument(format!("{e}")))?;
    let res = open_config(&cfg, source);
    if !cfg.result_file.is_empty() {
        let text = match &res {
            Ok(_) => "success".to_string(),
            Err(e) => format!("failed:{e}"),
        };
        std::fs::write(&cfg.result_file, text).map_err(|e| Error::io(&cfg.result_file, "write the result file", e))?;
    }
    res
}
