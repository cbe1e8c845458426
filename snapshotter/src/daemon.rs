//! The daemon process: config, logging, stale-state cleanup, the unix socket, metrics, and a
//! graceful stop on SIGTERM/SIGINT that detaches every device it owns.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use backstore::frontend::{self, FrontendKind};
use config::SnapshotterConfig;
use containerd_snapshots::tonic;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::devices::Devices;
use crate::service::Service;
use crate::snapshots::Snapshots;

/// Sets up logging at the config's level (`RUST_LOG` overrides it).
pub fn init_logging(cfg: &SnapshotterConfig) {
    let level = match cfg.verbose.as_str() {
        "warning" => "warn",
        "fatal" | "panic" => "error",
        l => l,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},fuser=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colours only on a terminal: journald and log files get plain text
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_file(cfg.log_report_caller)
        .with_line_number(cfg.log_report_caller)
        .try_init();
}

/// Removes what a killed earlier instance left of its frontends.
fn cleanup_frontends(kind: FrontendKind, run_dir: &Path) {
    let mut done = frontend::fuse_loop::cleanup_stale(run_dir);
    if matches!(kind, FrontendKind::Ublk | FrontendKind::Auto) {
        done.extend(frontend::ublk::cleanup_stale());
    }
    if matches!(kind, FrontendKind::Tcmu | FrontendKind::Auto) {
        done.extend(frontend::tcmu::cleanup_stale());
    }
    for d in done {
        tracing::warn!(what = %d, "cleaned up after an earlier process");
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cfg: SnapshotterConfig) -> anyhow::Result<()> {
    // SAFETY: setting SIGPIPE to ignored before any thread starts; no handler code runs.
    unsafe {
        nix::libc::signal(nix::libc::SIGPIPE, nix::libc::SIG_IGN);
    }
    let kind: FrontendKind = cfg.frontend.parse().context("frontend")?;
    let backstore = cfg.backstore().context("backstore settings")?;
    std::fs::create_dir_all(&cfg.run_dir).with_context(|| format!("creating {}", cfg.run_dir.display()))?;
    cleanup_frontends(kind, &cfg.run_dir);
    let run_dir = cfg.run_dir.clone();
    let tenant = cfg.tenant;
    let snapshots =
        Snapshots::open(cfg.clone(), |layout| Devices::new(layout.clone(), kind, &run_dir, tenant, backstore))
            .with_context(|| format!("opening the snapshotter root {}", cfg.root.display()))?;
    let snapshots = Arc::new(snapshots);
    let again = snapshots.clone();
    std::thread::Builder::new()
        .name("reattach".into())
        .spawn(move || again.reattach_devices())
        .context("starting the re-attach thread")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(256)
        .build()
        .context("starting the runtime")?;
    let r = rt.block_on(serve(cfg.clone(), snapshots.clone()));
    crate::metrics::set_alive(false);
    tracing::info!("stopping: detaching devices");
    snapshots.shutdown();
    let _ = std::fs::remove_file(&cfg.address);
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    r
}

async fn serve(cfg: SnapshotterConfig, snapshots: Arc<Snapshots>) -> anyhow::Result<()> {
    let sock = &cfg.address;
    if let Some(dir) = sock.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(sock) {
        Ok(()) => tracing::info!(socket = %sock.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the stale socket {}", sock.display())),
    }
    let listener = UnixListener::bind(sock).with_context(|| format!("listening on {}", sock.display()))?;
    if cfg.exporter_config.enable {
        let (port, path) = (cfg.exporter_config.port, cfg.exporter_config.uri_prefix.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(port, path).await {
                tracing::error!(port, error = %e, "the metrics exporter stopped");
            }
        });
    }
    crate::metrics::set_alive(true);
    tracing::info!(socket = %sock.display(), root = %cfg.root.display(), frontend = %cfg.frontend, "serving");
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    };
    tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(Service::new(snapshots))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await
        .context("serving gRPC")?;
    Ok(())
}
