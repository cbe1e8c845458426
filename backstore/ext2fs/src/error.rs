//! Errors: a libext2fs error code with the operation and the message libext2fs gives it.

use std::ffi::CStr;

use crate::sys;

/// A failed libext2fs call or I/O of its disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libext2fs returned an error code.
    #[error("{op}: {message} (ext2fs error {code})")]
    Ext2 {
        /// What was attempted.
        op: String,
        /// The error code (an errno or an `EXT2_ET_*` code).
        code: i64,
        /// Its message.
        message: String,
    },
    /// The disk under the filesystem failed.
    #[error("{op}: {cause}")]
    Disk {
        /// What was attempted.
        op: String,
        /// The disk's error.
        cause: std::io::Error,
    },
    /// A caller-supplied argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The message libext2fs has for `code`.
pub fn message(code: i64) -> String {
    // SAFETY: error_message returns a pointer to a static or thread-local NUL-terminated string
    // for any code.
    let p = unsafe { sys::error_message(code) };
    if p.is_null() {
        return format!("error {code}");
    }
    // SAFETY: non-null, NUL-terminated (above); copied out at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// `Ok(())` for 0, else an [`Error::Ext2`] for `op`.
pub fn check(code: sys::errcode_t, op: impl FnOnce() -> String) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(Error::Ext2 { op: op(), code, message: message(code) })
}

impl Error {
    /// The libext2fs error code, if this is one.
    pub fn code(&self) -> Option<i64> {
        match self {
            Error::Ext2 { code, .. } => Some(*code),
            _ => None,
        }
    }
}
