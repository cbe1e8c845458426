//! `ctr-obd`'s errors: each names what it was working on (call, image, layer, registry, file).

use std::time::Duration;

use containerd_client::tonic::{Code, Status};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asks for something wrong or unsupported.
    #[error("{0}")]
    Usage(String),
    /// containerd's socket cannot be reached.
    #[error("cannot connect to containerd at {address}: {what}")]
    Connect {
        /// The socket.
        address: String,
        /// Why.
        what: String,
    },
    /// A containerd call failed.
    #[error("containerd {call}: {}: {}", code_name(.status.code()), .status.message())]
    Containerd {
        /// The call and its subject, e.g. `Snapshots.Prepare extract-... sha256:...`.
        call: String,
        /// containerd's answer.
        status: Status,
    },
    /// Unpacking a layer failed.
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        /// Position, bottom first.
        index: usize,
        /// The layer blob's digest.
        digest: String,
        /// What failed.
        source: Box<Error>,
    },
    /// A registry request failed.
    #[error("registry {reference}: {what}")]
    Registry {
        /// The image reference (or registry host) asked.
        reference: String,
        /// What failed, with the causes.
        what: String,
    },
    /// An image document (index, manifest, config) is not usable.
    #[error("{0}")]
    Image(String),
    /// Building an overlaybd layer failed.
    #[error("converting {image}: {source}")]
    Convert {
        /// The source image.
        image: String,
        /// The convertor's error (names the layer).
        source: convertor::Error,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A step did not finish in time.
    #[error("{what}: not done within {}", humanize(*.after))]
    Timeout {
        /// The step.
        what: String,
        /// The bound.
        after: Duration,
    },
    /// The command was interrupted (SIGINT, SIGTERM) during the step named.
    #[error("{0}: interrupted")]
    Interrupted(String),
}

impl Error {
    /// The gRPC code when containerd answered with an error.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Containerd { status, .. } => Some(status.code()),
            Error::Layer { source, .. } => source.code(),
            _ => None,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Error {
        Error::Io { path: path.to_string(), source }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

fn code_name(c: Code) -> &'static str {
    match c {
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::InvalidArgument => "invalid argument",
        Code::FailedPrecondition => "failed precondition",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Unimplemented => "not implemented",
        Code::PermissionDenied => "permission denied",
        Code::Cancelled => "cancelled",
        Code::ResourceExhausted => "resource exhausted",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unauthenticated => "unauthenticated",
        Code::DataLoss => "data loss",
        Code::Internal => "internal error",
        Code::Ok | Code::Unknown => "error",
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// An error and its causes, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
