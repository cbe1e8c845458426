//! Writing a layer blob with its optional wrappers: ZFile compression and the tar wrapper,
//! laid out exactly as the reference's `overlaybd-commit -z -t` and `overlaybd-zfile -t` do.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use crate::io::pwrite_all;
use crate::tar;
use crate::zfile::{ZFileOptions, ZFileWriter};
use crate::{Error, Result};

/// Which wrappers to put around the payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct WrapOptions {
    /// Compress into a ZFile with these options.
    pub zfile: Option<ZFileOptions>,
    /// Rewrite the ZFile header with the final index fields (flags `0x1B`), as
    /// `overlaybd-commit -z` does; `overlaybd-zfile` leaves it (`0x13`).
    pub overwrite_header: bool,
    /// Put the result in the tar wrapper.
    pub tar: bool,
}

/// Writes to `out` (an empty file) what `produce` generates, wrapped as `opts` says. Returns the
/// size of the blob.
pub fn write_wrapped(
    out: &File,
    name: &str,
    opts: WrapOptions,
    produce: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<u64> {
    let base = if opts.tar { tar::WRITER_HEADER_LEN } else { 0 };
    let mut f = out;
    f.seek(SeekFrom::Start(base)).map_err(|e| Error::io(name, "seek", e))?;
    let mut bw = BufWriter::with_capacity(1 << 20, f);
    let zheader = match opts.zfile {
        Some(z) => {
            let mut zw = ZFileWriter::new(&mut bw, z)?;
            produce(&mut zw)?;
            Some(zw.finish()?.1)
        }
        None => {
            produce(&mut bw)?;
            None
        }
    };
    bw.flush().map_err(|e| Error::io(name, "write", e))?;
    drop(bw);
    let end = f.stream_position().map_err(|e| Error::io(name, "seek", e))?;
    let payload = end - base;
    if let (Some(h), true) = (zheader, opts.overwrite_header) {
        pwrite_all(out, name, &h.encode(), base)?;
    }
    let mut total = end;
    if opts.tar {
        let mode = out.metadata().map_err(|e| Error::io(name, "stat", e))?.mode();
        let t = tar::trailer(payload);
        pwrite_all(out, name, &t, end)?;
        pwrite_all(out, name, &tar::headers(payload, mode), 0)?;
        total += t.len() as u64;
    }
    out.sync_all().map_err(|e| Error::io(name, "fsync", e))?;
    Ok(total)
}
