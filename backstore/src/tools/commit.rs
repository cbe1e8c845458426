//! `overlaybd-commit DATA [INDEX] [OUT]`: compacts a writable layer into a committed layer
//! (optionally ZFile-compressed and tar-wrapped), seals a writable layer in place, or compacts a
//! sealed one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use crate::detect::open_layer_file;
use crate::lsmt::writable::{Recovery, WritableLayer};
use crate::lsmt::{write_committed, CommitOptions};
use crate::uuid::LayerUuid;
use crate::wrap::{write_wrapped, WrapOptions};
use crate::zfile::{Algorithm, ZFileOptions};

/// Commits a writable layer, as the reference's overlaybd-commit.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-commit", version, about)]
pub struct Args {
    /// Data file of the writable layer (or the sealed file with --commit_sealed).
    pub data: PathBuf,
    /// Index file of the writable layer (OUT with --commit_sealed).
    pub index: Option<PathBuf>,
    /// Output file.
    pub out: Option<PathBuf>,
    /// Commit message (user tag, at most 256 bytes).
    #[arg(short = 'm', long = "message", default_value = "")]
    pub message: String,
    /// UUID of the committed layer (all-zero if absent or invalid).
    #[arg(long)]
    pub uuid: Option<String>,
    /// Parent UUID (kept from the writable layer if absent or invalid).
    #[arg(short = 'p', long = "parent-uuid")]
    pub parent_uuid: Option<String>,
    /// Compress into a ZFile.
    #[arg(short = 'z', long = "compress")]
    pub compress: bool,
    /// ZFile algorithm: lz4 or zstd.
    #[arg(long, default_value = "lz4")]
    pub algorithm: String,
    /// ZFile block size in KiB (4, 8, 16, 32, 64).
    #[arg(long = "bs", default_value_t = 4)]
    pub block_size: u32,
    /// Tar wrapper (with -z only).
    #[arg(short = 't', long = "tar")]
    pub tar: bool,
    /// Remove OUT first.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    /// Seal DATA in place instead of writing OUT.
    #[arg(long)]
    pub seal: bool,
    /// DATA is a sealed layer; the second positional is OUT.
    #[arg(long = "commit_sealed")]
    pub commit_sealed: bool,
    /// Compression threads (0: one per CPU; the output is the same for any number).
    #[arg(long = "compress_threads", default_value_t = 0)]
    pub compress_threads: usize,
    /// Upload to a registry blob URL instead of writing OUT.
    #[arg(long)]
    pub upload: Option<String>,
    /// turboOCI warp layer.
    #[arg(long = "turboOCI", alias = "fastoci")]
    pub turbo_oci: bool,
    /// Debug logging.
    #[arg(long)]
    pub verbose: bool,
}

/// Runs the tool.
pub fn run(a: &Args) -> anyhow::Result<()> {
    if a.turbo_oci {
        bail!("--turboOCI layers are not supported by this implementation");
    }
    if a.upload.is_some() {
        bail!("--upload is not supported yet: commit to a file and push it with the convertor");
    }
    if a.seal {
        let index = a.index.as_ref().context("--seal needs DATA and INDEX")?;
        let layer = WritableLayer::open(&a.data, index, true, Recovery::Strict)?;
        layer.seal()?;
        return Ok(());
    }
    let uuid = a.uuid.as_deref().and_then(LayerUuid::parse).unwrap_or(LayerUuid::NIL);
    let parent = a.parent_uuid.as_deref().and_then(LayerUuid::parse);
    let wrap = WrapOptions {
        zfile: a
            .compress
            .then(|| -> anyhow::Result<ZFileOptions> {
                Ok(ZFileOptions {
                    algorithm: Algorithm::from_name_lenient(&a.algorithm),
                    block_size: super::block_size_kib(a.block_size)?,
                    verify: true,
                    threads: if a.compress_threads == 0 {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    } else {
                        a.compress_threads
                    },
                })
            })
            .transpose()?,
        overwrite_header: true,
        tar: a.tar && a.compress,
    };
    let user_tag = a.message.as_bytes().to_vec();
    if a.commit_sealed {
        let out = a.index.as_ref().context("--commit_sealed needs DATA and OUT")?;
        let layer = open_layer_file(&a.data)?;
        let t = layer.trailer();
        let opts = CommitOptions {
            uuid,
            parent_uuid: parent.unwrap_or(t.parent_uuid),
            user_tag,
            virtual_size: t.virtual_size,
        };
        let file = super::create_output(out, a.force)?;
        let segs = layer.index().segments();
        return write_out(&file, out, wrap, |w| {
            write_committed(segs, |s, b| layer.read_segment(s, b), &opts, w).map(|_| ())
        });
    }
    let (index, out) = match (&a.index, &a.out) {
        (Some(i), Some(o)) => (i, o),
        _ => bail!("usage: overlaybd-commit DATA INDEX OUT (or --seal DATA INDEX, --commit_sealed DATA OUT)"),
    };
    let layer = WritableLayer::open(&a.data, index, false, Recovery::Strict)?;
    let (_, writable_parent) = layer.uuids();
    let opts = CommitOptions {
        uuid,
        parent_uuid: parent.unwrap_or(writable_parent),
        user_tag,
        virtual_size: layer.virtual_size(),
    };
    let file = super::create_output(out, a.force)?;
    let segs = layer.segments();
    write_out(&file, out, wrap, |w| write_committed(&segs, |s, b| layer.read_segment(s, b), &opts, w).map(|_| ()))
}

fn write_out(
    file: &std::fs::File,
    path: &std::path::Path,
    wrap: WrapOptions,
    produce: impl FnOnce(&mut dyn std::io::Write) -> crate::Result<()>,
) -> anyhow::Result<()> {
    let name = path.display().to_string();
    if let Err(e) = write_wrapped(file, &name, wrap, produce) {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let a = Args::parse();
    super::run("overlaybd-commit", a.verbose, || run(&a))
}
