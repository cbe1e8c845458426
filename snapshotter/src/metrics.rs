//! Prometheus metrics (`snapshotter.md` §5.1): `is_alive`, `grpc_error_count{function}` and
//! `grpc_latency_seconds{function}` (20 exponential buckets from 0.1 ms, factor 2), served as
//! text at `http://:<port><uriPrefix>` when the exporter is enabled.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: usize = 20;

#[derive(Default)]
struct Series {
    errors: u64,
    buckets: [u64; BUCKETS],
    count: u64,
    sum: f64,
}

static ALIVE: AtomicBool = AtomicBool::new(false);
static SERIES: Mutex<Option<HashMap<&'static str, Series>>> = Mutex::new(None);

fn bound(i: usize) -> f64 {
    0.0001 * f64::from(1u32 << i)
}

/// Marks the daemon alive (1) or stopping (0).
pub fn set_alive(v: bool) {
    ALIVE.store(v, Ordering::Relaxed);
}

/// Records one call of `function`.
pub fn observe(function: &'static str, took: Duration, failed: bool) {
    let mut g = SERIES.lock().unwrap_or_else(|p| p.into_inner());
    let s = g.get_or_insert_with(HashMap::new).entry(function).or_default();
    let secs = took.as_secs_f64();
    s.count += 1;
    s.sum += secs;
    if failed {
        s.errors += 1;
    }
    for (i, b) in s.buckets.iter_mut().enumerate() {
        if secs <= bound(i) {
            *b += 1;
        }
    }
}

/// The metrics in Prometheus's text format.
pub fn render() -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP is_alive Whether the snapshotter is serving.\n# TYPE is_alive gauge");
    let _ = writeln!(out, "is_alive {}", u8::from(ALIVE.load(Ordering::Relaxed)));
    let g = SERIES.lock().unwrap_or_else(|p| p.into_inner());
    let mut names: Vec<(&&str, &Series)> = g.as_ref().map(|m| m.iter().collect()).unwrap_or_default();
    names.sort_by_key(|(n, _)| **n);
    let _ = writeln!(out, "# HELP grpc_error_count Failed gRPC calls.\n# TYPE grpc_error_count counter");
    for (n, s) in &names {
        let _ = writeln!(out, "grpc_error_count{{function=\"{n}\"}} {}", s.errors);
    }
    let _ = writeln!(out, "# HELP grpc_latency_seconds gRPC call latency.\n# TYPE grpc_latency_seconds histogram");
    for (n, s) in &names {
        for (i, b) in s.buckets.iter().enumerate() {
            let _ = writeln!(out, "grpc_latency_seconds_bucket{{function=\"{n}\",le=\"{}\"}} {b}", bound(i));
        }
        let _ = writeln!(out, "grpc_latency_seconds_bucket{{function=\"{n}\",le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "grpc_latency_seconds_sum{{function=\"{n}\"}} {}", s.sum);
        let _ = writeln!(out, "grpc_latency_seconds_count{{function=\"{n}\"}} {}", s.count);
    }
    out
}

/// Serves [`render`] over plain HTTP/1.1 on `port` at `path` until the runtime stops.
pub async fn serve(port: u16, path: String) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (mut c, _) = l.accept().await?;
        let path = path.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let target = req.split(' ').nth(1).unwrap_or("");
            let (status, body) =
                if target == path { ("200 OK", render()) } else { ("404 Not Found", "not found\n".to_string()) };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        set_alive(true);
        observe("Prepare", Duration::from_millis(3), false);
        observe("Prepare", Duration::from_millis(3), true);
        let t = render();
        assert!(t.contains("is_alive 1"));
        assert!(t.contains("grpc_error_count{function=\"Prepare\"} 1"));
        assert!(t.contains("grpc_latency_seconds_bucket{function=\"Prepare\",le=\"0.0001\"} 0"));
        assert!(t.contains("grpc_latency_seconds_count{function=\"Prepare\"} 2"));
    }
}
