//! The whole-command bound: `--timeout` and Ctrl-C cut the work short so that the caller can
//! clean up (active snapshots, leases, work directories) before it reports.

use std::future::Future;
use std::time::Duration;

/// Why the work was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// `--timeout` elapsed.
    Timeout(Duration),
    /// SIGINT or SIGTERM.
    Interrupted,
}

/// Runs `work` until it ends, `limit` elapses or the process is asked to stop.
pub async fn run<T>(limit: Option<Duration>, work: impl Future<Output = T>) -> Result<T, Cut> {
    let sleep = async {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    let stop = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    };
    tokio::select! {
        r = work => Ok(r),
        _ = sleep => Err(Cut::Timeout(limit.unwrap_or_default())),
        _ = stop => Err(Cut::Interrupted),
    }
}
