//! `overlaybd-dump`: the merged image of a config or of a list of layers, as a raw (sparse)
//! file, on stdout, or as its sha256.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use sha2::{Digest, Sha256};

use crate::block::BlockDevice;
use crate::stack::Stack;

/// Writes the merged virtual disk of a stack of layers.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-dump", version, about)]
pub struct Args {
    /// Layer files (any wrapping), bottom first.
    pub layers: Vec<PathBuf>,
    /// A config.v1.json to take the layers (local files) and the writable upper from.
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// A writable layer on top: DATA INDEX.
    #[arg(long, num_args = 2, value_names = ["DATA", "INDEX"])]
    pub upper: Option<Vec<PathBuf>>,
    /// Output: a file (written sparse) or `-` for stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Print the sha256 of the whole image (holes read as zeros).
    #[arg(long)]
    pub sha256: bool,
    /// Debug logging.
    #[arg(long)]
    pub verbose: bool,
}

/// Opens the stack that `a` describes.
pub fn open_stack(a: &Args) -> anyhow::Result<Stack> {
    let (mut lowers, mut upper) = (a.layers.clone(), a.upper.clone().map(|u| (u[0].clone(), u[1].clone())));
    if let Some(c) = &a.config {
        let cfg = config::DeviceConfig::load(c)?;
        for (i, l) in cfg.lowers.iter().enumerate() {
            let p = l.local_path().with_context(|| {
                format!("{}: lower layer {i} has no local file (remote layers are not read by this tool)", c.display())
            })?;
            lowers.push(p);
        }
        if !cfg.upper.is_empty() {
            upper = Some((cfg.upper.data.into(), cfg.upper.index.into()));
        }
    }
    if lowers.is_empty() && upper.is_none() {
        bail!("no layers given");
    }
    Ok(Stack::open_files(&lowers, upper.as_ref().map(|(d, i)| (d.as_path(), i.as_path())))?)
}

/// Feeds the whole image to `sink` in order, in chunks; runs of zeros that need no I/O are
/// passed as `None`.
pub fn for_each_chunk(
    stack: &Stack,
    mut sink: impl FnMut(u64, Option<&[u8]>, usize) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let size = stack.size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(CHUNK);
        if stack.reads_zeros(pos, n) {
            sink(pos, None, n as usize)?;
        } else {
            stack.read_at(&mut buf[..n as usize], pos)?;
            sink(pos, Some(&buf[..n as usize]), n as usize)?;
        }
        pos += n;
    }
    Ok(())
}

/// The sha256 of the whole image, holes read as zeros.
pub fn image_sha256(stack: &Stack) -> anyhow::Result<String> {
    let zeros = vec![0u8; 1 << 20];
    let mut h = Sha256::new();
    for_each_chunk(stack, |_, data, n| {
        h.update(data.unwrap_or(&zeros[..n]));
        Ok(())
    })?;
    Ok(hex::encode(h.finalize()))
}

/// Runs the tool.
pub fn run(a: &Args) -> anyhow::Result<()> {
    if a.output.is_none() && !a.sha256 {
        bail!("say what to produce: -o FILE, -o - (stdout) or --sha256");
    }
    let stack = open_stack(a)?;
    match a.output.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            let zeros = vec![0u8; 1 << 20];
            let mut out = std::io::stdout().lock();
            for_each_chunk(&stack, |_, data, n| Ok(out.write_all(data.unwrap_or(&zeros[..n]))?))?;
            out.flush()?;
        }
        Some(p) => {
            let f = super::create_output(p, true)?;
            for_each_chunk(&stack, |pos, data, _| {
                if let Some(d) = data {
                    f.write_all_at(d, pos).with_context(|| format!("{}: write", p.display()))?;
                }
                Ok(())
            })?;
            f.set_len(stack.size())?;
        }
        None => {}
    }
    if a.sha256 {
        println!("{}", image_sha256(&stack)?);
    }
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let a = Args::parse();
    super::run("overlaybd-dump", a.verbose, || run(&a))
}
