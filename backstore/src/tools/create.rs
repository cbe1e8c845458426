//! `overlaybd-create DATA INDEX VSIZE_GB [-s] [-u UUID] [--raw]`: a new writable layer.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use std::sync::Arc;

use crate::apply::disk::StackDisk;
use crate::block::BlockDevice;
use crate::lsmt::writable::{CreateOptions, Recovery, WritableLayer};
use crate::stack::Stack;
use crate::uuid::LayerUuid;

/// Creates a writable layer (data file + index file), as the reference's overlaybd-create.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-create", version, about)]
pub struct Args {
    /// Data file to create.
    pub data: PathBuf,
    /// Index file to create (left empty for a sparse layer).
    pub index: PathBuf,
    /// Virtual size in GiB (0: take the size of the layers below when stacked).
    pub vsize_gb: u64,
    /// Parent UUID.
    #[arg(short = 'u', long = "parent-uuid", value_name = "UUID")]
    pub parent_uuid: Option<String>,
    /// Sparse layer: data stored at its LBA in one sparse file.
    #[arg(short = 's', long = "sparse")]
    pub sparse: bool,
    /// Make DATA a plain raw image of VSIZE (no LSMT).
    #[arg(long)]
    pub raw: bool,
    /// Format the new layer with ext4 (in user space, as the reference does).
    #[arg(long)]
    pub mkfs: bool,
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
    if a.mkfs && a.vsize_gb == 0 {
        bail!("--mkfs needs a virtual size (VSIZE_GB > 0)");
    }
    let vsize = a.vsize_gb.checked_mul(1 << 30).context("virtual size overflows")?;
    if a.raw {
        let f = super::create_output(&a.data, false)?;
        f.set_len(vsize).with_context(|| format!("{}: cannot size the raw image", a.data.display()))?;
        if a.mkfs {
            ext2fs::mkfs::mkfs(Arc::new(f), &ext2fs::MkfsOptions::default())?.close()?;
        }
        return Ok(());
    }
    let parent_uuid = match &a.parent_uuid {
        Some(s) => LayerUuid::parse(s).with_context(|| format!("-u {s}: not a UUID (8-4-4-4-12 hex)"))?,
        None => LayerUuid::NIL,
    };
    let opts = CreateOptions { virtual_size: vsize, uuid: LayerUuid::random(), parent_uuid, sparse: a.sparse };
    WritableLayer::create(&a.data, &a.index, &opts)?;
    if a.mkfs {
        // Format in user space through the new layer: the filesystem's blocks land in it.
        let layer = WritableLayer::open(&a.data, &a.index, true, Recovery::Strict)?;
        let stack: Arc<dyn BlockDevice> = Arc::new(Stack::new(Vec::new(), Some(layer))?);
        ext2fs::mkfs::mkfs(Arc::new(StackDisk(stack)), &ext2fs::MkfsOptions::default())
            .context("making the filesystem")?
            .close()
            .context("writing the filesystem out")?;
    }
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let a = Args::parse();
    super::run("overlaybd-create", a.verbose, || run(&a))
}
