//! The embedded dedup store: one redb file on this machine (the default).

use std::path::Path;

use redb::{Database, TableDefinition};

use super::Entry;
use crate::error::{Error, Result};

/// `host \0 chain id \0 settings \0 repo` → `digest size`.
const LAYERS: TableDefinition<&str, &str> = TableDefinition::new("layers");
/// `host \0 source manifest digest \0 settings \0 repo` → `digest size media-type`.
const MANIFESTS: TableDefinition<&str, &str> = TableDefinition::new("manifests");

/// The store, in one redb file.
pub struct Embedded {
    db: Database,
    path: String,
}

fn key(host: &str, id: &str, settings: &str, repo: &str) -> String {
    format!("{host}\0{id}\0{settings}\0{repo}")
}

fn parse(repo: &str, v: &str) -> Option<Entry> {
    let mut f = v.splitn(3, ' ');
    let digest = f.next()?.to_string();
    let size = f.next()?.parse().ok()?;
    Some(Entry { repo: repo.to_string(), digest, size, media_type: f.next().unwrap_or("").to_string() })
}

impl Embedded {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Embedded> {
        let fail = |e: &dyn std::fmt::Display| Error::Store(format!("{}: {e}", path.display()));
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| fail(&e))?;
        }
        let db = Database::create(path).map_err(|e| fail(&e))?;
        let s = Embedded { db, path: path.display().to_string() };
        let tx = s.db.begin_write().map_err(|e| s.fail(e))?;
        tx.open_table(LAYERS).map_err(|e| s.fail(e))?;
        tx.open_table(MANIFESTS).map_err(|e| s.fail(e))?;
        tx.commit().map_err(|e| s.fail(e))?;
        Ok(s)
    }

    fn fail(&self, e: impl std::fmt::Display) -> Error {
        Error::Store(format!("{}: {e}", self.path))
    }

    fn lookup(&self, table: TableDefinition<&str, &str>, host: &str, id: &str, settings: &str) -> Result<Vec<Entry>> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = tx.open_table(table).map_err(|e| self.fail(e))?;
        let prefix = key(host, id, settings, "");
        let mut out = Vec::new();
        for row in t.range(prefix.as_str()..).map_err(|e| self.fail(e))? {
            let (k, v) = row.map_err(|e| self.fail(e))?;
            let Some(repo) = k.value().strip_prefix(prefix.as_str()) else { break };
            if let Some(e) = parse(repo, v.value()) {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn put(&self, table: TableDefinition<&str, &str>, k: &str, v: Option<&str>) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut t = tx.open_table(table).map_err(|e| self.fail(e))?;
            match v {
                Some(v) => t.insert(k, v).map(drop),
                None => t.remove(k).map(drop),
            }
            .map_err(|e| self.fail(e))?;
        }
        tx.commit().map_err(|e| self.fail(e))
    }

    /// The blobs the layer stack `chain_id` was converted to with `settings` on `host`.
    pub fn layers(&self, host: &str, chain_id: &str, settings: &str) -> Result<Vec<Entry>> {
        self.lookup(LAYERS, host, chain_id, settings)
    }

    /// Records that `repo` on `host` has the conversion of `chain_id`.
    pub fn add_layer(&self, host: &str, chain_id: &str, settings: &str, e: &Entry) -> Result<()> {
        self.put(LAYERS, &key(host, chain_id, settings, &e.repo), Some(&format!("{} {}", e.digest, e.size)))
    }

    /// Forgets a layer entry the registry no longer has.
    pub fn forget_layer(&self, host: &str, chain_id: &str, settings: &str, repo: &str) -> Result<()> {
        self.put(LAYERS, &key(host, chain_id, settings, repo), None)
    }

    /// The manifests the source manifest `src_digest` was converted to with `settings` on
    /// `host`.
    pub fn manifests(&self, host: &str, src_digest: &str, settings: &str) -> Result<Vec<Entry>> {
        self.lookup(MANIFESTS, host, src_digest, settings)
    }

    /// Records a converted manifest.
    pub fn add_manifest(&self, host: &str, src_digest: &str, settings: &str, e: &Entry) -> Result<()> {
        let v = format!("{} {} {}", e.digest, e.size, e.media_type);
        self.put(MANIFESTS, &key(host, src_digest, settings, &e.repo), Some(&v))
    }

    /// Forgets a manifest entry the registry no longer has.
    pub fn forget_manifest(&self, host: &str, src_digest: &str, settings: &str, repo: &str) -> Result<()> {
        self.put(MANIFESTS, &key(host, src_digest, settings, repo), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_host_chain_and_settings() {
        let d = tempfile::tempdir().unwrap();
        let s = Embedded::open(&d.path().join("x/dedup.redb")).unwrap();
        let e = |repo: &str, n: u64| Entry {
            repo: repo.into(),
            digest: format!("sha256:{n}"),
            size: n,
            media_type: String::new(),
        };
        s.add_layer("h", "sha256:c1", "lz4", &e("a/one", 1)).unwrap();
        s.add_layer("h", "sha256:c1", "lz4", &e("b", 2)).unwrap();
        s.add_layer("h", "sha256:c1", "zstd", &e("b", 3)).unwrap();
        s.add_layer("h", "sha256:c10", "lz4", &e("b", 4)).unwrap();
        s.add_layer("other", "sha256:c1", "lz4", &e("b", 5)).unwrap();
        assert_eq!(s.layers("h", "sha256:c1", "lz4").unwrap(), vec![e("a/one", 1), e("b", 2)]);
        assert_eq!(s.layers("h", "sha256:c1", "zstd").unwrap(), vec![e("b", 3)]);
        s.forget_layer("h", "sha256:c1", "lz4", "b").unwrap();
        assert_eq!(s.layers("h", "sha256:c1", "lz4").unwrap(), vec![e("a/one", 1)]);
        let m = Entry { media_type: "application/vnd.oci.image.manifest.v1+json".into(), ..e("b", 9) };
        s.add_manifest("h", "sha256:m", "lz4", &m).unwrap();
        drop(s);
        let s = Embedded::open(&d.path().join("x/dedup.redb")).unwrap();
        assert_eq!(s.manifests("h", "sha256:m", "lz4").unwrap(), vec![m]);
        assert!(s.manifests("h", "sha256:m", "zstd").unwrap().is_empty());
    }
}
