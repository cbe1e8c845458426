//! The shared dedup store: the reference's MySQL tables (`snapshotter.md` §10.5), so a fleet of
//! convertors (ours and the reference's) share what each converted. With default build
//! settings the keys are the reference's (chain ID, source manifest digest); other settings are
//! appended to them (`sha256:...;settings`), so such blobs are never mixed up with default ones.
//! The tables are created when missing.

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Pool};

use super::Entry;
use crate::error::{Error, Result};

/// A MySQL (or MariaDB) database.
pub struct Shared {
    pool: Pool,
    name: String,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS overlaybd_layers (host varchar(255) NOT NULL, repo varchar(255) NOT NULL, \
     chain_id varchar(255) NOT NULL, data_digest varchar(255) NOT NULL, data_size bigint NOT NULL, \
     PRIMARY KEY (host, repo, chain_id), KEY index_registry_chainId (host, chain_id))",
    "CREATE TABLE IF NOT EXISTS overlaybd_manifests (host varchar(255) NOT NULL, repo varchar(255) NOT NULL, \
     src_digest varchar(255) NOT NULL, out_digest varchar(255) NOT NULL, data_size bigint NOT NULL, \
     mediatype varchar(255) NOT NULL, PRIMARY KEY (host, repo, src_digest, mediatype), \
     KEY index_registry_src_digest (host, src_digest))",
];

/// A `mysql://` URL from a Go DSN as the reference takes it (`user:pass@tcp(host:port)/db`,
/// `user@unix(/socket)/db`), or the URL itself.
pub fn url_of(dsn: &str) -> Result<String> {
    if dsn.starts_with("mysql://") {
        return Ok(dsn.to_string());
    }
    let bad = || Error::Store(format!("--db-str {dsn:?}: not a DSN (user:pass@tcp(host:port)/db) nor a mysql:// URL"));
    let (cred, rest) = dsn.rsplit_once('@').unwrap_or(("", dsn));
    // (the address, `tcp(host:port)` or `unix(/path)`, may hold slashes itself)
    let (addr, db) = match rest.find(')') {
        Some(i) if rest.starts_with("tcp(") || rest.starts_with("unix(") => {
            let (a, d) = rest.split_at(i + 1);
            (a, d.strip_prefix('/').ok_or_else(bad)?)
        }
        _ => rest.split_once('/').ok_or_else(bad)?,
    };
    let db = db.split('?').next().unwrap_or_default();
    let at = if cred.is_empty() { String::new() } else { format!("{cred}@") };
    if let Some(h) = addr.strip_prefix("tcp(").and_then(|a| a.strip_suffix(')')) {
        Ok(format!("mysql://{at}{h}/{db}"))
    } else if let Some(sock) = addr.strip_prefix("unix(").and_then(|a| a.strip_suffix(')')) {
        Ok(format!("mysql://{at}localhost/{db}?socket={sock}"))
    } else if addr.is_empty() {
        Ok(format!("mysql://{at}127.0.0.1:3306/{db}"))
    } else {
        Err(bad())
    }
}

fn keyed(id: &str, settings: &str) -> String {
    if settings.is_empty() {
        id.to_string()
    } else {
        format!("{id};{settings}")
    }
}

impl Shared {
    /// Connects to the database of `dsn` and creates the tables when missing.
    pub async fn open(dsn: &str) -> Result<Shared> {
        let url = url_of(dsn)?;
        let opts = Opts::from_url(&url).map_err(|e| Error::Store(format!("--db-str: {e}")))?;
        let name = format!("mysql {}:{}/{}", opts.ip_or_hostname(), opts.tcp_port(), opts.db_name().unwrap_or(""));
        let s = Shared { pool: Pool::new(opts), name };
        let mut c = s.conn().await?;
        for q in SCHEMA {
            c.query_drop(*q).await.map_err(|e| s.fail(e))?;
        }
        Ok(s)
    }

    fn fail(&self, e: impl std::fmt::Display) -> Error {
        Error::Store(format!("{}: {e}", self.name))
    }

    async fn conn(&self) -> Result<mysql_async::Conn> {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.pool.get_conn())
            .await
            .map_err(|_| self.fail("no connection within 20 s"))?
            .map_err(|e| self.fail(e))
    }

    /// The blobs the layer stack `chain_id` was converted to with `settings` on `host`.
    pub async fn layers(&self, host: &str, chain_id: &str, settings: &str) -> Result<Vec<Entry>> {
        let mut c = self.conn().await?;
        let rows: Vec<(String, String, u64)> = c
            .exec(
                "SELECT repo, data_digest, data_size FROM overlaybd_layers WHERE host = ? AND chain_id = ?",
                (host, keyed(chain_id, settings)),
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(rows
            .into_iter()
            .map(|(repo, digest, size)| Entry { repo, digest, size, media_type: String::new() })
            .collect())
    }

    /// Records that `e.repo` on `host` has the conversion of `chain_id`.
    pub async fn add_layer(&self, host: &str, chain_id: &str, settings: &str, e: &Entry) -> Result<()> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "INSERT INTO overlaybd_layers (host, repo, chain_id, data_digest, data_size) VALUES (?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE data_digest = VALUES(data_digest), data_size = VALUES(data_size)",
            (host, &e.repo, keyed(chain_id, settings), &e.digest, e.size),
        )
        .await
        .map_err(|e| self.fail(e))
    }

    /// Forgets a layer entry the registry no longer has.
    pub async fn forget_layer(&self, host: &str, chain_id: &str, settings: &str, repo: &str) -> Result<()> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "DELETE FROM overlaybd_layers WHERE host = ? AND repo = ? AND chain_id = ?",
            (host, repo, keyed(chain_id, settings)),
        )
        .await
        .map_err(|e| self.fail(e))
    }

    /// The manifests the source manifest `src_digest` was converted to with `settings` on
    /// `host` (any media type: the caller picks).
    pub async fn manifests(&self, host: &str, src_digest: &str, settings: &str) -> Result<Vec<Entry>> {
        let mut c = self.conn().await?;
        let rows: Vec<(String, String, u64, String)> = c
            .exec(
                "SELECT repo, out_digest, data_size, mediatype FROM overlaybd_manifests WHERE host = ? AND src_digest = ?",
                (host, keyed(src_digest, settings)),
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(rows.into_iter().map(|(repo, digest, size, media_type)| Entry { repo, digest, size, media_type }).collect())
    }

    /// Records a converted manifest.
    pub async fn add_manifest(&self, host: &str, src_digest: &str, settings: &str, e: &Entry) -> Result<()> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "INSERT INTO overlaybd_manifests (host, repo, src_digest, out_digest, data_size, mediatype) \
             VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE out_digest = VALUES(out_digest), data_size = VALUES(data_size)",
            (host, &e.repo, keyed(src_digest, settings), &e.digest, e.size, &e.media_type),
        )
        .await
        .map_err(|e| self.fail(e))
    }

    /// Forgets a manifest entry the registry no longer has.
    pub async fn forget_manifest(&self, host: &str, src_digest: &str, settings: &str, repo: &str) -> Result<()> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "DELETE FROM overlaybd_manifests WHERE host = ? AND repo = ? AND src_digest = ?",
            (host, repo, keyed(src_digest, settings)),
        )
        .await
        .map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn go_dsns_become_urls() {
        assert_eq!(super::url_of("u:p@tcp(10.0.0.5:3306)/obd").unwrap(), "mysql://u:p@10.0.0.5:3306/obd");
        assert_eq!(super::url_of("u@tcp(db:3307)/obd?parseTime=true").unwrap(), "mysql://u@db:3307/obd");
        assert_eq!(
            super::url_of("u@unix(/run/mysqld.sock)/obd").unwrap(),
            "mysql://u@localhost/obd?socket=/run/mysqld.sock"
        );
        assert_eq!(super::url_of("mysql://a@b/c").unwrap(), "mysql://a@b/c");
        assert!(super::url_of("nonsense").is_err());
    }
}
