//! Trace prefetch at pull time (`prefetchOnPull`): when an acceleration layer is committed, its
//! trace is replayed in the background right away, through the devices' shared remote source,
//! so that the chunk cache is warm before a container of the image opens its device.
//!
//! A warm-up is a thread (`obd-warmup-<id>`) that opens, read-only, the stack the acceleration
//! layer's config describes (`accelerationLayer: true`: the backstore starts the trace's
//! prefetch workers), keeps it open until the prefetch has finished, the warm-up is cancelled,
//! or [`MAX_WARMUP`] has passed, then drops it (which cancels and joins the workers). A device
//! opened meanwhile reads through the same cache, whose single-flight shares every chunk
//! fetched or in flight. Failures are logged and ignored: a warm-up never fails a Commit.
//!
//! Every remote layer committed at pull also has its metadata fetched ([`layer_metadata`]): the
//! headers, jump table and index a device reads when it opens the layer, so that a container
//! started after the pull opens its layers from the cache.
//!
//! One warm-up per snapshot at a time; [`Warmups::cancel`] (the snapshot is removed) and
//! [`Warmups::shutdown`] (the daemon stops) stop and join them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backstore::device::{open_config, LayerSource};
use config::DeviceConfig;

/// How long a warm-up may keep its stack open.
pub const MAX_WARMUP: Duration = Duration::from_secs(600);

/// How often a warm-up looks at its prefetch and its cancel flag.
const POLL: Duration = Duration::from_millis(20);

struct Running {
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Running {
    fn stop(self) {
        self.cancel.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

#[derive(Default)]
struct State {
    running: HashMap<u64, Running>,
    closed: bool,
}

/// The warm-ups in progress, by snapshot id.
#[derive(Default)]
pub struct Warmups {
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The config a warm-up opens: the acceleration layer's, read-only, replaying its trace, with
/// no result file, no recording and no background download (the device does those).
pub fn warmup_config(accel: &DeviceConfig) -> DeviceConfig {
    let mut cfg = accel.clone();
    cfg.acceleration_layer = true;
    cfg.record_trace_path.clear();
    cfg.result_file.clear();
    cfg.upper = Default::default();
    cfg.download = Some(serde_json::json!({ "enable": false }));
    cfg
}

impl Warmups {
    /// Starts warming the cache with snapshot `id`'s acceleration-layer config `cfg` (made by
    /// [`warmup_config`]), read through `source` (the devices' shared one), unless one runs for
    /// `id` already or the daemon is stopping. Returns at once.
    pub fn start(&self, source: Arc<dyn LayerSource>, id: u64, cfg: DeviceConfig) {
        let mut st = lock(&self.state);
        // reap the finished ones
        let done: Vec<u64> = st.running.iter().filter(|(_, r)| r.thread.is_finished()).map(|(k, _)| *k).collect();
        for k in done {
            if let Some(r) = st.running.remove(&k) {
                let _ = r.thread.join();
            }
        }
        if st.closed {
            tracing::debug!(id, "stopping: no prefetch at pull");
            return;
        }
        if st.running.contains_key(&id) {
            tracing::debug!(id, "a prefetch at pull runs already for this snapshot");
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let dispatch = tracing::dispatcher::get_default(|x| x.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("obd-warmup-{id}"))
            .spawn(move || tracing::dispatcher::with_default(&dispatch, || run(source.as_ref(), id, &cfg, &c)));
        match spawned {
            Ok(thread) => {
                st.running.insert(id, Running { cancel, thread });
            }
            Err(e) => tracing::warn!(id, error = %e, "cannot start the prefetch at pull"),
        }
    }

    /// Whether a warm-up of snapshot `id` is running.
    pub fn is_running(&self, id: u64) -> bool {
        lock(&self.state).running.get(&id).is_some_and(|r| !r.thread.is_finished())
    }

    /// Stops snapshot `id`'s warm-up, if any, and joins it (its prefetch workers with it).
    pub fn cancel(&self, id: u64) {
        let r = lock(&self.state).running.remove(&id);
        if let Some(r) = r {
            tracing::info!(id, "prefetch at pull cancelled: the snapshot is removed");
            r.stop();
        }
    }

    /// Stops every warm-up and joins them; no new one starts after this.
    pub fn shutdown(&self) {
        let all: Vec<(u64, Running)> = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.running.drain().collect()
        };
        for (_, r) in &all {
            r.cancel.store(true, Ordering::Release);
        }
        for (id, r) in all {
            let _ = r.thread.join();
            tracing::debug!(id, "prefetch at pull stopped");
        }
    }
}

/// Fetches the metadata of layer `cfg.lowers.last()` (snapshot `id`) into the cache, in a
/// detached thread (`obd-layer-meta-<id>`): opening the layer reads its headers, jump table and
/// index, which the cache keeps; the device that opens the layer later reads them from there.
/// A few requests, each bounded by the registry retry policy; a failure is logged and
/// ignored (the device fetches what it needs when it opens).
pub fn layer_metadata(source: Arc<dyn LayerSource>, id: u64, cfg: &DeviceConfig) {
    let Some(layer) = cfg.lowers.last().cloned() else { return };
    let mut cfg = cfg.clone();
    cfg.download = Some(serde_json::json!({ "enable": false }));
    let dispatch = tracing::dispatcher::get_default(|x| x.clone());
    let spawned = std::thread::Builder::new().name(format!("obd-layer-meta-{id}")).spawn(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            let started = Instant::now();
            let opened = source
                .open(&cfg, cfg.lowers.len() - 1, &layer)
                .and_then(|blob| backstore::detect::open_layer(blob, true));
            match opened {
                Ok(_) => tracing::info!(
                    id,
                    blob = %layer.digest,
                    ms = started.elapsed().as_millis() as u64,
                    "layer metadata fetched at pull"
                ),
                Err(e) => tracing::warn!(id, blob = %layer.digest, error = %e, "layer metadata not fetched at pull"),
            }
        })
    });
    if let Err(e) = spawned {
        tracing::warn!(id, error = %e, "cannot fetch the layer metadata at pull");
    }
}

/// The warm-up thread's body.
fn run(source: &dyn LayerSource, id: u64, cfg: &DeviceConfig, cancel: &AtomicBool) {
    let started = Instant::now();
    let stack = match open_config(cfg, source) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(id, error = %e, "prefetch at pull: opening the image failed (the device prefetches when it opens)");
            return;
        }
    };
    if cancel.load(Ordering::Acquire) {
        tracing::info!(id, "prefetch at pull cancelled while the image opened");
        return;
    }
    let Some(progress) = stack.prefetch_progress() else {
        tracing::info!(id, "prefetch at pull: the acceleration layer has no usable trace");
        return;
    };
    tracing::info!(id, "prefetch at pull started");
    let end = started + MAX_WARMUP;
    loop {
        let s = progress.stats();
        if cancel.load(Ordering::Acquire) {
            tracing::info!(id, bytes = s.bytes, "prefetch at pull cancelled");
            break;
        }
        if s.finished {
            tracing::info!(
                id,
                records = s.records_done,
                reads = s.reads_done,
                failed = s.reads_failed,
                bytes = s.bytes,
                ms = started.elapsed().as_millis() as u64,
                "prefetch at pull finished"
            );
            break;
        }
        if Instant::now() >= end {
            tracing::warn!(id, bytes = s.bytes, limit_s = MAX_WARMUP.as_secs(), "prefetch at pull gave up: too slow");
            break;
        }
        std::thread::sleep(POLL);
    }
    // dropping the stack cancels the prefetch and joins its workers
    drop(stack);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warmup_config_is_read_only_and_replays() {
        let mut c = DeviceConfig {
            result_file: "/x/init-debug.log".into(),
            record_trace_path: "/x/t".into(),
            ..Default::default()
        };
        c.upper.data = "/x/d".into();
        c.upper.index = "/x/i".into();
        let w = warmup_config(&c);
        assert!(w.acceleration_layer);
        assert!(w.result_file.is_empty() && w.record_trace_path.is_empty() && w.upper.is_empty());
        assert_eq!(w.download, Some(serde_json::json!({ "enable": false })));
    }
}
