//! What a snapshot holds (`identifySnapshotStorageType`, `snapshotter.md` §4): every decision of
//! the state machine starts here, and the order of the checks is the reference's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::labels;
use crate::layout::Layout;

/// The storage type of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A plain directory layer (overlayfs semantics).
    Normal,
    /// An overlaybd layer whose blob is local (`overlaybd.commit`, `.sealed` or a writable layer).
    LocalBlock,
    /// An overlaybd layer read from the registry (or with a device config).
    RemoteBlock,
    /// A layer tar waiting for TurboOCI conversion (not supported by this implementation).
    LocalLayer,
}

impl Storage {
    /// An overlaybd device backs it.
    pub fn is_block(self) -> bool {
        matches!(self, Storage::LocalBlock | Storage::RemoteBlock)
    }
}

const ZFILE_MAGIC: &[u8; 24] = b"ZFile\0\x01\0tuji.yyf@Alibaba";
const LSMT_MAGIC: [u8; 24] = [
    0x4c, 0x53, 0x4d, 0x54, 0x00, 0x01, 0x02, 0x00, 0x65, 0x7e, 0x63, 0xd2, 0x94, 0x44, 0x08, 0x4c, 0xa2, 0xd2, 0xc8,
    0xec, 0x4f, 0xcf, 0xae, 0x8a,
];

/// Some(true) for an overlaybd magic, Some(false) for another readable file, None when the file
/// cannot be read or is empty (the check falls through to the next file).
fn magic_of(p: &Path) -> Option<bool> {
    let mut f = std::fs::File::open(p).ok()?;
    let mut buf = [0u8; 32];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    if n == 0 {
        return None;
    }
    Some(n >= 24 && (&buf[..24] == ZFILE_MAGIC || buf[..24] == LSMT_MAGIC))
}

/// Whether `labels` describe a lazily pulled overlaybd layer.
pub fn is_remote_layer(l: &BTreeMap<String, String>) -> bool {
    l.contains_key(labels::TARGET_SNAPSHOT_REF)
        && l.contains_key(labels::BLOB_SIZE)
        && l.contains_key(labels::BLOB_DIGEST)
        && (l.contains_key(labels::TARGET_IMAGE_REF) || l.contains_key(labels::CRI_IMAGE_REF))
}

/// Classifies snapshot `id` with `labels`.
pub fn classify(layout: &Layout, id: u64, l: &BTreeMap<String, String>) -> Storage {
    if is_remote_layer(l) {
        return Storage::RemoteBlock;
    }
    let rw_dir = l.get(labels::ACTIVE_PATH).map_or_else(|| layout.block(id), |p| p.into());
    for f in
        [layout.fs(id).join("overlaybd.commit"), layout.fs(id).join("overlaybd.sealed"), rw_dir.join("writable_data")]
    {
        match magic_of(&f) {
            Some(true) => return Storage::LocalBlock,
            Some(false) => return Storage::Normal,
            None => {}
        }
    }
    if layout.dir(id).join("layer.tar").exists() {
        return Storage::LocalLayer;
    }
    if layout.config(id).exists() {
        Storage::RemoteBlock
    } else {
        Storage::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_order() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path());
        for id in 1..=6 {
            std::fs::create_dir_all(l.fs(id)).unwrap();
            std::fs::create_dir_all(l.block(id)).unwrap();
        }
        let none = BTreeMap::new();
        assert_eq!(classify(&l, 1, &none), Storage::Normal);
        std::fs::write(l.fs(2).join("overlaybd.commit"), [&ZFILE_MAGIC[..], &[0u8; 100]].concat()).unwrap();
        assert_eq!(classify(&l, 2, &none), Storage::LocalBlock);
        // a tar-wrapped commit file is Normal (as the reference)
        std::fs::write(l.fs(3).join("overlaybd.commit"), vec![b'x'; 512]).unwrap();
        std::fs::write(l.fs(3).join("overlaybd.sealed"), LSMT_MAGIC).unwrap();
        assert_eq!(classify(&l, 3, &none), Storage::Normal);
        // an empty file falls through
        std::fs::write(l.fs(4).join("overlaybd.commit"), b"").unwrap();
        std::fs::write(l.block(4).join("writable_data"), LSMT_MAGIC).unwrap();
        assert_eq!(classify(&l, 4, &none), Storage::LocalBlock);
        std::fs::write(l.config(5), "{}").unwrap();
        assert_eq!(classify(&l, 5, &none), Storage::RemoteBlock);
        let mut remote = BTreeMap::new();
        for k in [labels::TARGET_SNAPSHOT_REF, labels::BLOB_SIZE, labels::BLOB_DIGEST] {
            remote.insert(k.to_string(), "x".to_string());
        }
        assert_eq!(classify(&l, 6, &remote), Storage::Normal, "no image reference");
        remote.insert(labels::CRI_IMAGE_REF.into(), "r".into());
        assert_eq!(classify(&l, 6, &remote), Storage::RemoteBlock);
    }
}
