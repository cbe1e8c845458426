//! The convertor's errors.

/// What went wrong, with the layer, file or field it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A layer could not be built.
    #[error("layer {index} ({diff_id}): {what}")]
    Layer {
        /// Position in the image, bottom first.
        index: usize,
        /// The source layer's diff ID.
        diff_id: String,
        /// What failed.
        what: String,
    },
    /// A config or manifest is not what an image needs.
    #[error("{0}")]
    Image(String),
    /// The registry refused or failed a request.
    #[error("registry: {0}")]
    Registry(String),
    /// The deduplication store failed.
    #[error("dedup store {0}")]
    Store(String),
    /// A setting the convertor does not support.
    #[error("{0}")]
    Unsupported(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
