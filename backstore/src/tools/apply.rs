//! `overlaybd-apply INPUT_TAR CONFIG [--mkfs] [--raw] [--checksum SHA256]`: unpacks an OCI
//! layer tar (plain, gzip or zstd; a file, a FIFO or `-` for stdin) into the ext4 of the stack
//! CONFIG describes, in user space: every change lands in its writable upper layer. No device,
//! no mount, no root.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;

use crate::apply::{self, disk::StackDisk, input};
use crate::device::{open_device, LocalSource};

/// Applies an OCI layer to an overlaybd device's ext4 in user space.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-apply", version, about)]
pub struct Args {
    /// The layer tar (plain, gzip or zstd; "-" for stdin).
    pub input: PathBuf,
    /// The device's config.v1.json (it needs an upper layer), or with --raw a raw image file.
    pub config: PathBuf,
    /// Make a new ext4 filesystem first.
    #[arg(long)]
    pub mkfs: bool,
    /// CONFIG is a raw image file.
    #[arg(long)]
    pub raw: bool,
    /// Expected sha256 of the uncompressed tar stream ("sha256:" prefix optional).
    #[arg(long)]
    pub checksum: Option<String>,
    /// The global config (accepted for compatibility; local layers need nothing from it).
    #[arg(long = "service_config_path", default_value = "/etc/overlaybd/overlaybd.json")]
    pub service_config_path: PathBuf,
    /// turboOCI mode (not supported).
    #[arg(long = "gz_index_path")]
    pub gz_index_path: Option<PathBuf>,
    /// Debug logging.
    #[arg(long)]
    pub verbose: bool,
}

/// Runs the tool.
pub fn run(a: &Args) -> anyhow::Result<()> {
    if a.gz_index_path.is_some() {
        bail!("--gz_index_path (turboOCI) is not supported by this implementation");
    }
    let expected = match &a.checksum {
        Some(c) => {
            let hex = c.strip_prefix("sha256:").unwrap_or(c).to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("--checksum {c}: not a sha256 (64 hex digits)");
            }
            Some(hex)
        }
        None => None,
    };
    let disk: Arc<dyn ext2fs::Disk> = if a.raw {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&a.config)
            .with_context(|| format!("{}: cannot open the raw image", a.config.display()))?;
        Arc::new(f)
    } else {
        let stack = open_device(&a.config, &LocalSource).with_context(|| format!("opening {}", a.config.display()))?;
        if crate::block::BlockDevice::read_only(&stack) {
            bail!("{}: the config has no upper layer to apply into", a.config.display());
        }
        Arc::new(StackDisk(Arc::new(stack)))
    };
    let mut fs = if a.mkfs {
        ext2fs::mkfs::mkfs(disk, &ext2fs::MkfsOptions::default()).context("making the filesystem")?
    } else {
        ext2fs::Filesystem::open(disk).context("opening the filesystem (use --mkfs for a new device)")?
    };
    let reader = input::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    let mut hashing = input::Hashing::new(reader, expected.is_some());
    let stats = apply::apply(&mut fs, &mut hashing).with_context(|| format!("applying {}", a.input.display()))?;
    let (digest, bytes) = hashing.finish().with_context(|| format!("reading the end of {}", a.input.display()))?;
    if let (Some(want), Some(digest)) = (expected, digest) {
        if digest != want {
            bail!(
                "{}: checksum mismatch: the tar stream is sha256:{digest}, expected sha256:{want}",
                a.input.display()
            );
        }
    }
    fs.close().context("writing the filesystem out")?;
    tracing::info!(entries = stats.entries, file_bytes = stats.file_bytes, tar_bytes = bytes, "applied");
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let a = Args::parse();
    super::run("overlaybd-apply", a.verbose, || run(&a))
}
