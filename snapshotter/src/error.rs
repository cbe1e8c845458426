//! The snapshotter's errors, and their one mapping to gRPC status codes (which containerd maps
//! back to its errdefs classes: `AlreadyExists` drives the remote-layer handshake).

use containerd_snapshots::tonic::{Code, Status};

/// A snapshotter error. Each says what failed and on which snapshot, file or device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The snapshot, parent or file does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken (and, for a remote layer, the layer is ready).
    #[error("{0}")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A label, key or field path is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A feature of the reference this implementation does not have.
    #[error("{0}")]
    Unimplemented(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(String),
    /// A file-system operation failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A device could not be opened, attached, formatted, mounted or detached.
    #[error("{0}")]
    Device(String),
    /// A disk is full.
    #[error("{0}")]
    NoSpace(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, what: &'static str, source: std::io::Error) -> Error {
        Error::Io { path: path.as_ref().display().to_string(), what, source }
    }

    /// The gRPC code containerd sees.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Io { source, .. } if source.raw_os_error() == Some(nix::libc::ENOSPC) => Code::ResourceExhausted,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Code::NotFound,
            Error::NoSpace(_) => Code::ResourceExhausted,
            Error::Store(_) | Error::Io { .. } | Error::Device(_) => Code::Unknown,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<backstore::Error> for Error {
    fn from(e: backstore::Error) -> Error {
        match &e {
            backstore::Error::Io { cause, .. } if cause.raw_os_error() == Some(nix::libc::ENOSPC) => {
                Error::NoSpace(e.to_string())
            }
            _ => Error::Device(e.to_string()),
        }
    }
}
