//! The command line (`snapshotter.md` §10.1, §10.3): global containerd flags and the `rpull`,
//! `obdconv`, `record-trace` and `push` subcommands with the registry flags of `ctr`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// `ctr-obd`: ctr extensions for overlaybd images.
#[derive(Debug, Parser)]
#[command(
    name = "ctr-obd",
    version,
    about = "ctr extensions for overlaybd images (rpull, obdconv, record-trace, push)"
)]
pub struct Cli {
    /// containerd's gRPC socket.
    #[arg(
        short = 'a',
        long,
        global = true,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(short = 'n', long, global = true, env = "CONTAINERD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Total time the command may take (e.g. `90s`, `5m`, `1h30m`; a bare number is seconds).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull an image lazily through the overlaybd snapshotter: fetch index, manifest and config
    /// only, let the snapshotter commit the remote layers, record the image.
    Rpull(RpullArgs),
    /// Convert an image in containerd's content store to overlaybd, in user space, as a new image.
    Obdconv(ObdconvArgs),
    /// Make a new image from an overlaybd one with an acceleration layer (a trace recorded by
    /// running a temporary container, or a priority list) on top.
    #[command(name = "record-trace")]
    RecordTrace(RecordTraceArgs),
    /// Push an image of containerd's store to a registry, also when its layers were pulled
    /// lazily (blobs the registry has are skipped, blobs of the source repository mounted).
    Push(PushArgs),
}

/// The registry flags of `ctr` (`commands.RegistryFlags`).
#[derive(Debug, Clone, Args)]
pub struct RegistryFlags {
    /// Skip TLS certificate verification.
    #[arg(short = 'k', long)]
    pub skip_verify: bool,
    /// Talk plain HTTP to the registry.
    #[arg(long)]
    pub plain_http: bool,
    /// Registry credentials, `user:password`.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Extra CA certificate (PEM) to trust.
    #[arg(long)]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate (not supported: rejected).
    #[arg(long)]
    pub tlscert: Option<PathBuf>,
    /// Client key (not supported: rejected).
    #[arg(long)]
    pub tlskey: Option<PathBuf>,
    /// containerd hosts directory (not supported: rejected).
    #[arg(long)]
    pub hosts_dir: Option<PathBuf>,
    /// Refresh token (not supported: rejected).
    #[arg(long)]
    pub refresh: Option<String>,
    /// Dump HTTP traffic (not supported: rejected).
    #[arg(long)]
    pub http_dump: bool,
    /// Trace HTTP requests (not supported: rejected).
    #[arg(long)]
    pub http_trace: bool,
}

impl RegistryFlags {
    /// The first flag given that this build cannot honour, with the reason.
    pub fn unsupported(&self) -> Option<String> {
        let why = if self.tlscert.is_some() || self.tlskey.is_some() {
            "--tlscert/--tlskey (TLS client certificates) are not supported by ctr-obd"
        } else if self.hosts_dir.is_some() {
            "--hosts-dir is not supported by ctr-obd: use --plain-http, --skip-verify, --tlscacert and --user"
        } else if self.refresh.is_some() {
            "--refresh (refresh tokens) is not supported by ctr-obd: use --user user:password"
        } else if self.http_dump || self.http_trace {
            "--http-dump/--http-trace are not supported by ctr-obd: set RUST_LOG=debug for request logs"
        } else {
            return None;
        };
        Some(why.to_string())
    }
}

/// `ctr-obd rpull`.
#[derive(Debug, Args)]
pub struct RpullArgs {
    /// Registry access.
    #[command(flatten)]
    pub registry: RegistryFlags,
    /// Labels of the image record, `key=value` (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The snapshotter to unpack into.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlaybd")]
    pub snapshotter: String,
    /// Have containerd download the overlaybd blobs instead of reading them lazily.
    #[arg(long)]
    pub download_blobs: bool,
    /// The image, fully qualified: `host/repository:tag` or `host/repository@sha256:...`.
    pub reference: String,
}

/// `ctr-obd push` (the arguments of `ctr image push`).
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Registry access.
    #[command(flatten)]
    pub registry: RegistryFlags,
    /// Where to push, fully qualified: `host/repository:tag`.
    pub remote: String,
    /// The image in containerd's store (default: REMOTE).
    pub local: Option<String>,
}

/// `ctr-obd obdconv`.
#[derive(Debug, Args)]
pub struct ObdconvArgs {
    /// Registry access (accepted for compatibility; obdconv does not talk to a registry).
    #[command(flatten)]
    pub registry: RegistryFlags,
    /// Filesystem of the overlaybd image (only ext4 is built).
    #[arg(long, default_value = "ext4")]
    pub fstype: String,
    /// Layer deduplication database (not supported: rejected).
    #[arg(long)]
    pub dbstr: Option<String>,
    /// ZFile compression: `lz4` or `zstd`.
    #[arg(long, default_value = "lz4")]
    pub algorithm: String,
    /// ZFile block size in KiB (4 to 64, a power of two).
    #[arg(long = "bs", default_value_t = 4)]
    pub block_size_kib: u32,
    /// Virtual size of the image in GB.
    #[arg(long, default_value_t = 64)]
    pub vsize: u64,
    /// The image to convert (in containerd's store).
    pub src: String,
    /// The name of the converted image.
    pub dst: String,
}

/// `ctr-obd record-trace` (`snapshotter.md` §10.4): the reference's flags.
#[derive(Debug, Args)]
pub struct RecordTraceArgs {
    /// Recording time in seconds; then the task gets SIGTERM (SIGKILL after as long again).
    #[arg(long = "time", default_value_t = 60)]
    pub time: u64,
    /// A file listing the files to prefetch, used as the trace instead of recording (no
    /// COMMAND then).
    #[arg(long = "priority_list")]
    pub priority_list: Option<PathBuf>,
    /// Directory of the temporary trace files.
    #[arg(long, default_value = "/tmp/ctr-record-trace/")]
    pub working_dir: PathBuf,
    /// The snapshotter the container runs on.
    #[arg(long, default_value = "overlaybd")]
    pub snapshotter: String,
    /// The runtime of the container.
    #[arg(long, default_value = "io.containerd.runc.v2")]
    pub runtime: String,
    /// Accepted for compatibility (the layers are not downloaded).
    #[arg(long, default_value_t = 8)]
    pub max_concurrent_downloads: u32,
    /// No CNI bridge: the container gets a network namespace of its own with no interface up.
    #[arg(long)]
    pub disable_network_isolation: bool,
    /// Where the CNI plugins (bridge, host-local, loopback) are.
    #[arg(long, default_value = "/opt/cni/bin/")]
    pub cni_plugin_dir: PathBuf,
    /// The overlaybd image to record (in containerd's store).
    pub old: String,
    /// The name of the new image.
    pub new: String,
    /// What the container runs instead of the image's entrypoint and command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// A Go-style duration (`1h2m3s`, `500ms`) or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 90s, 5m, 1h30m, 500ms)");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(bad)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[u_end..];
        total += Duration::try_from_secs_f64(n * unit).map_err(|_| bad())?;
    }
    Ok(total)
}

/// `key=value` labels.
pub fn parse_labels(labels: &[String]) -> Result<std::collections::HashMap<String, String>, String> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("--label {l:?}: expected key=value")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10x", "-1s", "1h-"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_need_a_key() {
        let l = parse_labels(&["a=b".into(), "c=".into()]).unwrap();
        assert_eq!(l["a"], "b");
        assert_eq!(l["c"], "");
        assert!(parse_labels(&["=x".into()]).is_err());
        assert!(parse_labels(&["x".into()]).is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let c =
            Cli::try_parse_from(["ctr-obd", "-n", "x", "rpull", "--plain-http", "-u", "a:b", "h:5000/r:t"]).unwrap();
        assert_eq!(c.namespace, "x");
        match c.command {
            Command::Rpull(a) => {
                assert!(a.registry.plain_http);
                assert_eq!(a.reference, "h:5000/r:t");
                assert_eq!(a.registry.user.as_deref(), Some("a:b"));
            }
            _ => panic!("wrong subcommand"),
        }
        let c = Cli::try_parse_from(["ctr-obd", "obdconv", "--hosts-dir", "/x", "a", "b"]).unwrap();
        match c.command {
            Command::Obdconv(a) => assert!(a.registry.unsupported().is_some()),
            _ => panic!("wrong subcommand"),
        }
        let c =
            Cli::try_parse_from(["ctr-obd", "record-trace", "--time", "5", "a", "b", "sh", "-c", "cat /x"]).unwrap();
        match c.command {
            Command::RecordTrace(a) => {
                assert_eq!((a.time, a.old.as_str(), a.new.as_str()), (5, "a", "b"));
                assert_eq!(a.command, ["sh", "-c", "cat /x"]);
                assert_eq!(a.working_dir, PathBuf::from("/tmp/ctr-record-trace/"));
                assert_eq!((a.snapshotter.as_str(), a.runtime.as_str()), ("overlaybd", "io.containerd.runc.v2"));
                assert!(!a.disable_network_isolation && a.priority_list.is_none());
            }
            _ => panic!("wrong subcommand"),
        }
    }
}
