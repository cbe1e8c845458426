//! The deduplication store (`snapshotter.md` §10.5): which overlaybd blob a source layer stack
//! was already converted to, per registry host and repository, and which converted manifest a
//! source manifest became. A later conversion of an image sharing layers reuses the blobs (in
//! the same repository, or mounted from another one on the same host) instead of building them
//! again.
//!
//! Two backends: [`Embedded`] (a redb file, the default: one machine) and [`Shared`] (the
//! reference's MySQL tables, for a fleet of convertors, also shared with the reference's
//! convertors). Keys include the build settings when they are not the defaults (compression,
//! block size, virtual size for layers; OCI types and referrers for manifests): a layer
//! converted with other settings is another blob. Entries are only hints: every hit is checked
//! against the registry before it is used, and a hit the registry no longer has is forgotten.

mod embedded;
mod shared;

pub use embedded::Embedded;
pub use shared::Shared;

use crate::error::Result;

/// A converted blob or manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The repository (without host) that has it.
    pub repo: String,
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Its media type (manifests only; empty for layers).
    pub media_type: String,
}

/// The store of a conversion.
pub enum Store {
    /// A redb file.
    Embedded(Embedded),
    /// A MySQL database.
    Shared(Shared),
}

impl Store {
    /// The blobs the layer stack `chain_id` was converted to with `settings` on `host`, the
    /// ones in `repo` first.
    pub async fn layers(&self, host: &str, chain_id: &str, settings: &str, repo: &str) -> Result<Vec<Entry>> {
        let mut v = match self {
            Store::Embedded(s) => s.layers(host, chain_id, settings)?,
            Store::Shared(s) => s.layers(host, chain_id, settings).await?,
        };
        v.sort_by_key(|e| e.repo != repo);
        Ok(v)
    }

    /// Records that `e.repo` on `host` has the conversion of `chain_id`.
    pub async fn add_layer(&self, host: &str, chain_id: &str, settings: &str, e: &Entry) -> Result<()> {
        match self {
            Store::Embedded(s) => s.add_layer(host, chain_id, settings, e),
            Store::Shared(s) => s.add_layer(host, chain_id, settings, e).await,
        }
    }

    /// Forgets a layer entry the registry no longer has.
    pub async fn forget_layer(&self, host: &str, chain_id: &str, settings: &str, repo: &str) -> Result<()> {
        match self {
            Store::Embedded(s) => s.forget_layer(host, chain_id, settings, repo),
            Store::Shared(s) => s.forget_layer(host, chain_id, settings, repo).await,
        }
    }

    /// The manifests the source manifest `src_digest` was converted to with `settings` on
    /// `host`, the one in `repo` first.
    pub async fn manifests(&self, host: &str, src_digest: &str, settings: &str, repo: &str) -> Result<Vec<Entry>> {
        let mut v = match self {
            Store::Embedded(s) => s.manifests(host, src_digest, settings)?,
            Store::Shared(s) => s.manifests(host, src_digest, settings).await?,
        };
        v.sort_by_key(|e| e.repo != repo);
        Ok(v)
    }

    /// Records a converted manifest.
    pub async fn add_manifest(&self, host: &str, src_digest: &str, settings: &str, e: &Entry) -> Result<()> {
        match self {
            Store::Embedded(s) => s.add_manifest(host, src_digest, settings, e),
            Store::Shared(s) => s.add_manifest(host, src_digest, settings, e).await,
        }
    }

    /// Forgets a manifest entry the registry no longer has.
    pub async fn forget_manifest(&self, host: &str, src_digest: &str, settings: &str, repo: &str) -> Result<()> {
        match self {
            Store::Embedded(s) => s.forget_manifest(host, src_digest, settings, repo),
            Store::Shared(s) => s.forget_manifest(host, src_digest, settings, repo).await,
        }
    }
}
