//! Remote layers: blobs read by byte range from a registry, through a local cache.
//!
//! * [`retry`]: the one retry policy every remote read follows (bounded tries and time);
//! * [`auth`]: `WWW-Authenticate` challenges and Bearer tokens;
//! * [`credentials`]: docker-format credential files;
//! * [`registry`]: byte ranges of blobs over HTTP(S), authenticated, under the retry policy;
//! * [`cache`]: the self-checking, size-limited chunk cache on disk;
//! * [`blob`]: a remote blob as a [`ReadAt`](crate::io::ReadAt);
//! * [`download`]: the rate-limited, resumable, verified background download;
//! * [`source`]: the [`LayerSource`](crate::device::LayerSource) for configs with remote lowers.

pub mod auth;
pub mod blob;
pub mod cache;
pub mod credentials;
pub mod download;
pub mod registry;
pub mod retry;
pub mod source;
