//! `overlaybd-snapshotter [--config FILE] [--root DIR] [--address SOCKET] [--frontend NAME]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config::SnapshotterConfig;

/// containerd's proxy snapshotter for overlaybd images.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-snapshotter", version, about)]
struct Args {
    /// Config file (TOML, or the reference's JSON by its .json extension).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The reference's form: the config file as the only argument.
    #[arg(conflicts_with = "config")]
    config_positional: Option<PathBuf>,
    /// Snapshotter root (overrides the file).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Unix socket to serve (overrides the file).
    #[arg(long)]
    address: Option<PathBuf>,
    /// Block frontend: auto, ublk, tcmu or fuse-loop (overrides the file).
    #[arg(long)]
    frontend: Option<String>,
    /// Frontend runtime state directory (overrides the file).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Log level (overrides the file).
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let explicit = a.config.clone().or(a.config_positional.clone());
    let path = explicit.clone().unwrap_or_else(|| PathBuf::from(config::snapshotter::DEFAULT_PATH));
    let mut cfg = match SnapshotterConfig::load(&path, explicit.is_some()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("overlaybd-snapshotter: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(r) = a.root {
        cfg.root = r;
    }
    if let Some(s) = a.address {
        cfg.address = s;
    }
    if let Some(f) = a.frontend {
        cfg.frontend = f;
    }
    if let Some(d) = a.run_dir {
        cfg.run_dir = d;
    }
    if let Some(l) = a.log_level {
        cfg.verbose = l;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("overlaybd-snapshotter: {e}");
        return ExitCode::FAILURE;
    }
    snapshotter::daemon::init_logging(&cfg);
    match snapshotter::daemon::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("overlaybd-snapshotter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
