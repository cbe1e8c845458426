//! The command-line tools, as library code: each submodule has the tool's arguments (with the
//! reference's names) and its `main`. The binaries in `src/bin/` only call these.

pub mod apply;
pub mod attach;
pub mod commit;
pub mod create;
pub mod dump;
pub mod info;
pub mod zfile;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

/// Sets up logging (`--verbose` for debug) and runs a tool, printing its error chain.
pub fn run(tool: &str, verbose: bool, f: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    // fuser logs every request it answers on our behalf at warn; keep only its errors.
    let level = if verbose { "debug,fuser=warn" } else { "warn,fuser=error" };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // colours only on a terminal: journald and log files get plain text
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    match f() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Creates an output file that must not exist; with `force`, removes it first (`-f`).
pub fn create_output(path: &Path, force: bool) -> anyhow::Result<File> {
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("{}: cannot remove: {e}", path.display())),
        }
    }
    OpenOptions::new().read(true).write(true).create_new(true).mode(0o644).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{}: already exists (use -f to overwrite)", path.display())
        } else {
            anyhow::anyhow!("{}: cannot create: {e}", path.display())
        }
    })
}

/// Parses a `--bs` value in KiB: 4, 8, 16, 32 or 64.
pub fn block_size_kib(kib: u32) -> anyhow::Result<u32> {
    if !kib.is_power_of_two() || !(4..=64).contains(&kib) {
        anyhow::bail!("--bs {kib}: the block size must be 4, 8, 16, 32 or 64 (KiB)");
    }
    Ok(kib * 1024)
}
