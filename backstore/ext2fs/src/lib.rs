//! A small safe wrapper over libext2fs, the library of e2fsprogs, for editing ext4 filesystems
//! in user space: no block device, no kernel mount, no root.
//!
//! The filesystem lives on any [`Disk`] (an overlaybd layer stack, a raw image file); an I/O
//! manager of ours ([`io_manager`]) connects libext2fs to it.
//!
//! Why libext2fs rather than an ext4 writer in Rust: it is the library e2fsprogs' own `mke2fs`,
//! `debugfs` and `e2fsck` use and the one the reference's `overlaybd-apply` uses, so it handles
//! every feature of the images we meet (extents, htree directories, xattrs, 64-bit, inline
//! data, checksums) the way the kernel and e2fsck expect; no Rust crate writes ext4 completely.

pub mod cache;
pub mod disk;
pub mod error;
pub mod fs;
pub mod io_manager;
pub mod map;
pub mod mkfs;
pub mod node;
pub mod sys;

pub use disk::Disk;
pub use error::{Error, Result};
pub use fs::{Filesystem, Ino};
pub use mkfs::MkfsOptions;
pub use node::{Attrs, Entry, Kind, Time};
