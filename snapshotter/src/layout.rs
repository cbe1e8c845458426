//! Where things live under the snapshotter root (`snapshotter.md` §3):
//! `<root>/metadata.db` and `<root>/snapshots/<id>/{fs,work,block/...}`.

use std::path::{Path, PathBuf};

/// The paths of one root.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Layout {
        Layout { root: root.to_path_buf() }
    }
    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The metadata store.
    pub fn db(&self) -> PathBuf {
        self.root.join("metadata.db")
    }
    /// The directory of all snapshot directories.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    /// `<root>/snapshots/<id>`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }
    /// The overlay upper dir, or the unpacked layer.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }
    /// The overlay work dir (active snapshots only).
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }
    /// The device's directory.
    pub fn block(&self, id: u64) -> PathBuf {
        self.dir(id).join("block")
    }
    /// Where the device's file system is mounted.
    pub fn mountpoint(&self, id: u64) -> PathBuf {
        self.block(id).join("mountpoint")
    }
    /// The device's `config.v1.json`.
    pub fn config(&self, id: u64) -> PathBuf {
        self.block(id).join("config.v1.json")
    }
    /// The device's result file.
    pub fn result_file(&self, id: u64) -> PathBuf {
        self.block(id).join("init-debug.log")
    }
    /// The text file naming the attached device.
    pub fn backstore_mark(&self, id: u64) -> PathBuf {
        self.block(id).join("backstore_mark")
    }
    /// The image reference file.
    pub fn image_ref(&self, id: u64) -> PathBuf {
        self.dir(id).join("image_ref")
    }
}
