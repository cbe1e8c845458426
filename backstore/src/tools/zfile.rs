//! `overlaybd-zfile SRC [DST]`: compress a file into a ZFile (`-t`: tar-wrapped), extract one
//! (`-x`), or verify its block checksums (`--verify`). With one path, SRC is read from stdin.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::detect::unwrap;
use crate::io::{LocalFile, MemSource, ReadAt};
use crate::wrap::{write_wrapped, WrapOptions};
use crate::zfile::{Algorithm, ZFileOptions};

/// Compresses, extracts or verifies a ZFile, as the reference's overlaybd-zfile.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-zfile", version, about)]
pub struct Args {
    /// Source file (or the destination, reading the source from stdin, if it is the only path).
    pub src: PathBuf,
    /// Destination file.
    pub dst: Option<PathBuf>,
    /// Algorithm: lz4 or zstd (anything else means lz4, as the reference).
    #[arg(long, default_value = "lz4")]
    pub algorithm: String,
    /// Block size in KiB (4, 8, 16, 32, 64).
    #[arg(long = "bs", default_value_t = 4)]
    pub block_size: u32,
    /// Tar wrapper on the output (with -x: read the source through the tar reader).
    #[arg(short = 't', long = "tar")]
    pub tar: bool,
    /// Extract (decompress) SRC into DST.
    #[arg(short = 'x', long = "extract")]
    pub extract: bool,
    /// Verify all block CRCs of SRC.
    #[arg(long)]
    pub verify: bool,
    /// Remove DST first.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    /// Compression threads.
    #[arg(long = "compress_threads", default_value_t = 1)]
    pub compress_threads: usize,
    /// Debug logging.
    #[arg(long)]
    pub verbose: bool,
}

fn open_source(path: Option<&Path>) -> anyhow::Result<Arc<dyn ReadAt>> {
    Ok(match path {
        Some(p) => Arc::new(LocalFile::open(p)?),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().lock().read_to_end(&mut buf).context("reading stdin")?;
            Arc::new(MemSource::new(buf, "<stdin>"))
        }
    })
}

/// Runs the tool.
pub fn run(a: &Args) -> anyhow::Result<()> {
    let (src, dst) = match &a.dst {
        Some(d) => (Some(a.src.as_path()), Some(d.as_path())),
        None if a.verify => (Some(a.src.as_path()), None),
        None => (None, Some(a.src.as_path())),
    };
    if a.verify {
        let u = unwrap(open_source(src)?, true)?;
        let z = u.zfile.context("not a ZFile: nothing to verify")?;
        z.verify_all()?;
        println!("{}: all {} block checksums are valid", z.name(), z.blocks());
        return Ok(());
    }
    let dst = dst.context("no destination")?;
    if a.extract {
        let u = unwrap(open_source(src)?, true)?;
        let z = u.zfile.context("the source is not a ZFile")?;
        let out = super::create_output(dst, a.force)?;
        if let Err(e) = extract_to(z.as_ref(), &out, dst) {
            let _ = std::fs::remove_file(dst);
            return Err(e);
        }
        return Ok(());
    }
    let opts = ZFileOptions {
        algorithm: Algorithm::from_name_lenient(&a.algorithm),
        block_size: super::block_size_kib(a.block_size)?,
        verify: true,
        threads: a.compress_threads.max(1),
    };
    let out = super::create_output(dst, a.force)?;
    let wrap = WrapOptions { zfile: Some(opts), overwrite_header: false, tar: a.tar };
    let res = write_wrapped(&out, &dst.display().to_string(), wrap, |w| {
        let mut input: Box<dyn Read> = match src {
            Some(p) => Box::new(File::open(p).map_err(|e| crate::Error::io(p.display().to_string(), "open", e))?),
            None => Box::new(std::io::stdin().lock()),
        };
        std::io::copy(&mut input, w).map_err(|e| crate::Error::io("input", "copy into the ZFile", e))?;
        Ok(())
    });
    if let Err(e) = res {
        let _ = std::fs::remove_file(dst);
        return Err(e.into());
    }
    Ok(())
}

/// Writes all bytes of `src` to `out`, leaving holes where whole 64 KiB chunks are zero.
pub fn extract_to(src: &dyn ReadAt, out: &File, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let size = src.size();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], pos, "raw content")?;
        for (i, c) in buf[..n].chunks(64 << 10).enumerate() {
            if c.iter().any(|&b| b != 0) {
                out.write_all_at(c, pos + (i as u64) * (64 << 10))
                    .with_context(|| format!("{}: write", path.display()))?;
            }
        }
        pos += n as u64;
    }
    out.set_len(size).with_context(|| format!("{}: set size", path.display()))?;
    let mut w = out;
    w.flush()?;
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let a = Args::parse();
    super::run("overlaybd-zfile", a.verbose, || run(&a))
}
