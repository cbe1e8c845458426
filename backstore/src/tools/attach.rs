//! `overlaybd-attach [--frontend auto|tcmu|ublk|fuse-loop] CONFIG...`: attaches the device a
//! `config.v1.json` describes, prints its path as the first line of stdout, serves it in the
//! foreground, and detaches on SIGINT/SIGTERM. With several configs it serves them all from
//! this one process, printing one device path per line in order.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use crate::device::{open_device, LocalSource};
use crate::frontend::{self, fuse_loop, tcmu, ublk, FrontendKind};
use crate::remote::source::RemoteSource;

/// Attaches an overlaybd device and serves it until SIGINT/SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-attach", version, about)]
pub struct Args {
    /// The device's config.v1.json (several: one device each, served by this process).
    pub config: Vec<PathBuf>,
    /// Frontend: auto, tcmu, ublk or fuse-loop.
    #[arg(long, default_value = "auto")]
    pub frontend: String,
    /// Directory for runtime state (FUSE mount points).
    #[arg(long, default_value = "/run/overlaybd")]
    pub run_dir: PathBuf,
    /// Device id (default: derived from the config path; only with a single config).
    #[arg(long)]
    pub id: Option<String>,
    /// Only remove what a killed process left (loop devices and FUSE mounts under --run-dir,
    /// ublk and TCMU devices whose server is gone), then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// The global config (credentials and cache for remote layers), as the reference's.
    #[arg(long = "service_config_path", default_value = config::global::DEFAULT_PATH)]
    pub service_config_path: PathBuf,
    /// Debug logging.
    #[arg(long)]
    pub verbose: bool,
}

/// A device id from a config path: its hex-hashed absolute path.
fn id_for(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    hex::encode(&Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8])
}

/// Runs the tool.
pub fn run(a: &Args) -> anyhow::Result<()> {
    if a.cleanup {
        for what in
            fuse_loop::cleanup_stale(&a.run_dir).into_iter().chain(ublk::cleanup_stale()).chain(tcmu::cleanup_stale())
        {
            println!("{what}");
        }
        return Ok(());
    }
    if a.config.is_empty() {
        anyhow::bail!("CONFIG is required");
    }
    if a.id.is_some() && a.config.len() > 1 {
        anyhow::bail!("--id names a single device: give one CONFIG with it");
    }
    let kind: FrontendKind = a.frontend.parse()?;
    // Block the signals before any thread starts, so that only sigwait below receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    // Devices attached so far are detached (by drop) if a later one fails.
    let mut attached = Vec::new();
    let mut remote: Option<RemoteSource> = None;
    for config in &a.config {
        let cfg = config::DeviceConfig::load(config).with_context(|| format!("reading {}", config.display()))?;
        let needs_remote = cfg.lowers.iter().any(|l| l.local_path().is_none() && !l.digest.is_empty());
        let stack = if needs_remote {
            if remote.is_none() {
                let g = config::GlobalConfig::load_json(&a.service_config_path)?;
                remote = Some(RemoteSource::from_global(&g).context("setting up remote layers")?);
            }
            open_device(config, remote.as_ref().context("remote source")?)
        } else {
            open_device(config, &LocalSource)
        }
        .with_context(|| format!("opening {}", config.display()))?;
        let id = a.id.clone().unwrap_or_else(|| id_for(config));
        let dev = frontend::attach(kind, Arc::new(stack), &id, &a.run_dir)
            .with_context(|| format!("attaching {}", config.display()))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", dev.device_path().display())?;
        out.flush()?;
        attached.push(dev);
    }
    let sig = signals.wait().context("waiting for a signal")?;
    tracing::info!(signal = ?sig, "detaching");
    let mut result = Ok(());
    for dev in attached.into_iter().rev() {
        let path = dev.device_path().display().to_string();
        if let Err(e) = dev.detach() {
            tracing::error!(device = %path, error = %e, "detach failed");
            result = Err(anyhow::Error::new(e).context(format!("detaching {path}")));
        }
    }
    result
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let a = Args::parse();
    super::run("overlaybd-attach", a.verbose, || run(&a))
}
