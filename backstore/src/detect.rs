//! What a layer file is, by its magic: tar → ZFile → LSMT (spec §6).

use std::path::Path;
use std::sync::Arc;

use crate::io::{LocalFile, ReadAt, Window};
use crate::lsmt::header::LsmtHeader;
use crate::lsmt::CommittedLayer;
use crate::tar::{self, TarPayload};
use crate::zfile::{ZFile, ZFileHeader};
use crate::{Error, Result};

/// The kind of a file as seen from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A ustar archive (the tar wrapper).
    Tar,
    /// A ZFile.
    ZFile,
    /// An LSMT file (committed, sealed, or the data/index file of a writable layer).
    Lsmt,
    /// Anything else.
    Unknown,
}

/// Classifies the first 512 bytes of a file.
pub fn kind_of(head: &[u8]) -> FileKind {
    if tar::is_ustar_header(head) {
        FileKind::Tar
    } else if ZFile::detect(head) {
        FileKind::ZFile
    } else if LsmtHeader::has_magic(head) {
        FileKind::Lsmt
    } else {
        FileKind::Unknown
    }
}

/// A layer blob with its wrappers peeled.
pub struct Unwrapped {
    /// The innermost content (normally an LSMT file).
    pub inner: Arc<dyn ReadAt>,
    /// The tar payload position, if the blob was tar-wrapped.
    pub tar: Option<TarPayload>,
    /// The ZFile, if the content was compressed.
    pub zfile: Option<Arc<ZFile>>,
}

/// Peels the tar wrapper and the ZFile container, each if present. With `verify`, ZFile block
/// CRCs are checked on every read.
pub fn unwrap(src: Arc<dyn ReadAt>, verify: bool) -> Result<Unwrapped> {
    let mut inner = src;
    let tar = tar::detect(inner.as_ref())?;
    if let Some(p) = tar {
        inner = Arc::new(Window::new(inner, p.offset, p.size));
    }
    let mut head = [0u8; 512];
    let n = inner.size().min(512) as usize;
    inner.read_meta_at(&mut head[..n], 0, "the first bytes")?;
    let mut zfile = None;
    if ZFile::detect(&head[..n]) {
        let z = Arc::new(ZFile::open(inner, verify)?);
        inner = z.clone();
        zfile = Some(z);
    }
    Ok(Unwrapped { inner, tar, zfile })
}

/// Opens a read-only layer in any of its forms: LSMT, ZFile(LSMT), tar(LSMT), tar(ZFile(LSMT)).
pub fn open_layer(src: Arc<dyn ReadAt>, verify: bool) -> Result<CommittedLayer> {
    let u = unwrap(src, verify)?;
    let mut head = [0u8; 512];
    let n = u.inner.size().min(512) as usize;
    u.inner.read_meta_at(&mut head[..n], 0, "the first bytes")?;
    let head = &head[..n];
    if n >= 24 && !LsmtHeader::has_magic(head) {
        // Say what was found instead of a bare "bad magic" of the innermost format.
        let name = u.inner.name();
        let reason = if u.zfile.is_some() {
            "the ZFile's content has no LSMT magic".to_string()
        } else if ZFileHeader::has_magic(head) {
            let at = if u.tar.is_some() { "the start of the tar payload" } else { "offset 0" };
            format!("ZFile magic without the header flag at {at}")
        } else if u.tar.is_some() {
            "the tar payload has no ZFile or LSMT magic".to_string()
        } else if n >= 265 && &head[257..262] == b"ustar" {
            if n < 512 {
                return Err(Error::Truncated {
                    file: name.into(),
                    what: "tar header".into(),
                    offset: 0,
                    end: 512,
                    size: n as u64,
                });
            }
            "the tar header at 0 has a bad checksum or is not a POSIX ustar header".to_string()
        } else {
            "no tar, ZFile or LSMT magic at offset 0".to_string()
        };
        return Err(Error::format(name, "overlaybd layer", reason));
    }
    CommittedLayer::open(u.inner)
}

/// Opens a local layer file; ZFile block CRCs are always verified.
pub fn open_layer_file(path: impl AsRef<Path>) -> Result<CommittedLayer> {
    open_layer(Arc::new(LocalFile::open(path)?), true)
}
