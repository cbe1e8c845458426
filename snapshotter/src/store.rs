//! The metadata store: snapshot records in an embedded, transactional database (redb) at
//! `<root>/metadata.db`, with containerd's snapshot semantics (`snapshotter.md` §3):
//! monotonic ids that name the snapshot directories, parents that must be committed,
//! "has children" checks, labels, and the usage recorded at commit.
//!
//! Every mutating call runs in one write transaction ([`Store::write`]): an error anywhere in
//! the closure leaves the store as it was.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// name -> JSON record
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// "<parent>\0<child>" -> ()
const CHILDREN: TableDefinition<&str, ()> = TableDefinition::new("children");
/// counters
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

/// The kind of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, uncommittable.
    View,
    /// Writable, committable.
    Active,
    /// Immutable, may be a parent.
    Committed,
}

impl Kind {
    /// containerd's filter spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// One snapshot as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Numeric id: the directory `<root>/snapshots/<id>`.
    pub id: u64,
    /// Kind.
    pub kind: Kind,
    /// Name of the parent ("" for none).
    pub parent: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, ns since the epoch.
    pub created_ns: u64,
    /// Last update, ns since the epoch.
    pub updated_ns: u64,
    /// Bytes used, recorded at commit.
    pub size: i64,
    /// Inodes used, recorded at commit.
    pub inodes: i64,
}

impl Record {
    /// Creation time.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.created_ns)
    }
    /// Last update.
    pub fn updated(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.updated_ns)
    }
    /// A label, if set.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn db_err(what: &str, e: impl std::fmt::Display) -> Error {
    let msg = format!("{what}: {e}");
    if msg.contains("No space left on device") {
        Error::NoSpace(format!("metadata store: {msg}"))
    } else {
        Error::Store(msg)
    }
}

/// The store.
pub struct Store {
    db: Database,
}

/// A write transaction; see [`Store::write`].
pub struct WriteTx {
    tx: redb::WriteTransaction,
}

/// A read transaction; see [`Store::read`].
pub struct ReadTx {
    tx: redb::ReadTransaction,
}

fn decode(name: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|e| db_err(&format!("record of {name:?} is damaged"), e))
}

fn child_key(parent: &str, child: &str) -> String {
    format!("{parent}\0{child}")
}

impl Store {
    /// Opens (or makes) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path).map_err(|e| db_err(&format!("open {}", path.display()), e))?;
        let tx = db.begin_write().map_err(|e| db_err("begin", e))?;
        {
            tx.open_table(SNAPSHOTS).map_err(|e| db_err("open table", e))?;
            tx.open_table(CHILDREN).map_err(|e| db_err("open table", e))?;
            tx.open_table(META).map_err(|e| db_err("open table", e))?;
        }
        tx.commit().map_err(|e| db_err("commit", e))?;
        Ok(Store { db })
    }

    /// Runs `f` in a write transaction, committed if `f` succeeds and rolled back otherwise.
    pub fn write<T>(&self, f: impl FnOnce(&mut WriteTx) -> Result<T>) -> Result<T> {
        let tx = self.db.begin_write().map_err(|e| db_err("begin a write", e))?;
        let mut w = WriteTx { tx };
        match f(&mut w) {
            Ok(v) => {
                w.tx.commit().map_err(|e| db_err("commit", e))?;
                Ok(v)
            }
            Err(e) => {
                let _ = w.tx.abort();
                Err(e)
            }
        }
    }

    /// Runs `f` on a consistent snapshot of the store.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTx) -> Result<T>) -> Result<T> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin a read", e))?;
        f(&ReadTx { tx })
    }
}

macro_rules! common_reads {
    () => {
        /// The record named `name`.
        pub fn get(&self, name: &str) -> Result<Option<Record>> {
            let t = self.tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
            let v = t.get(name).map_err(|e| db_err("get", e))?;
            v.map(|g| decode(name, g.value())).transpose()
        }

        /// The record named `name`, or NotFound.
        pub fn must(&self, name: &str) -> Result<Record> {
            self.get(name)?.ok_or_else(|| Error::NotFound(format!("snapshot {name:?} does not exist")))
        }

        /// Every record, by name.
        pub fn all(&self) -> Result<Vec<(String, Record)>> {
            let t = self.tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
            let mut out = Vec::new();
            for item in t.iter().map_err(|e| db_err("iterate", e))? {
                let (k, v) = item.map_err(|e| db_err("iterate", e))?;
                let name = k.value().to_string();
                let r = decode(&name, v.value())?;
                out.push((name, r));
            }
            Ok(out)
        }

        /// Names of the snapshots whose parent is `name`.
        pub fn children(&self, name: &str) -> Result<Vec<String>> {
            let t = self.tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
            let lo = format!("{name}\0");
            let hi = format!("{name}\u{1}");
            let mut out = Vec::new();
            for item in t.range(lo.as_str()..hi.as_str()).map_err(|e| db_err("range", e))? {
                let (k, _) = item.map_err(|e| db_err("range", e))?;
                if let Some((_, c)) = k.value().split_once('\0') {
                    out.push(c.to_string());
                }
            }
            Ok(out)
        }

        /// The chain of parents of `r`, nearest first.
        pub fn ancestors(&self, r: &Record) -> Result<Vec<(String, Record)>> {
            let mut out: Vec<(String, Record)> = Vec::new();
            let mut p = r.parent.clone();
            while !p.is_empty() {
                if out.len() > 4096 {
                    return Err(Error::Store(format!("parent chain of {p:?} loops")));
                }
                let rec = self.must(&p)?;
                let next = rec.parent.clone();
                out.push((p, rec));
                p = next;
            }
            Ok(out)
        }
    };
}

impl ReadTx {
    common_reads!();
}

impl WriteTx {
    common_reads!();

    fn put(&mut self, name: &str, r: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(r).map_err(|e| db_err("encode", e))?;
        let mut t = self.tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
        t.insert(name, bytes.as_slice()).map_err(|e| db_err("insert", e))?;
        Ok(())
    }

    fn next_id(&mut self) -> Result<u64> {
        let mut t = self.tx.open_table(META).map_err(|e| db_err("open", e))?;
        let id = t.get(NEXT_ID).map_err(|e| db_err("get", e))?.map_or(1, |g| g.value());
        t.insert(NEXT_ID, id + 1).map_err(|e| db_err("insert", e))?;
        Ok(id)
    }

    /// Creates an Active or View snapshot `name` on `parent` (which must be committed).
    pub fn create(&mut self, name: &str, parent: &str, kind: Kind, labels: BTreeMap<String, String>) -> Result<Record> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("a snapshot key must not be empty".into()));
        }
        if self.get(name)?.is_some() {
            return Err(Error::AlreadyExists(format!("snapshot {name:?} already exists")));
        }
        if !parent.is_empty() {
            let p = self
                .get(parent)?
                .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?} does not exist")))?;
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!("parent {parent:?} is not a committed snapshot")));
            }
        }
        let now = now_ns();
        let r = Record {
            id: self.next_id()?,
            kind,
            parent: parent.to_string(),
            labels,
            created_ns: now,
            updated_ns: now,
            size: 0,
            inodes: 0,
        };
        self.put(name, &r)?;
        if !parent.is_empty() {
            let mut t = self.tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
            t.insert(child_key(parent, name).as_str(), ()).map_err(|e| db_err("insert", e))?;
        }
        Ok(r)
    }

    /// Commits the active snapshot `key` as `name`, keeping its id, with these labels (they
    /// replace the active snapshot's, as containerd's store does) and usage.
    pub fn commit_active(
        &mut self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        size: i64,
        inodes: i64,
    ) -> Result<Record> {
        let a = self.must(key)?;
        if a.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!("snapshot {key:?} is not active: only active ones commit")));
        }
        if name.is_empty() {
            return Err(Error::InvalidArgument("a snapshot name must not be empty".into()));
        }
        if self.get(name)?.is_some() {
            return Err(Error::AlreadyExists(format!("snapshot {name:?} already exists")));
        }
        self.delete(key, &a)?;
        let now = now_ns();
        let r = Record { kind: Kind::Committed, labels, created_ns: now, updated_ns: now, size, inodes, ..a };
        self.put(name, &r)?;
        if !r.parent.is_empty() {
            let mut t = self.tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
            t.insert(child_key(&r.parent, name).as_str(), ()).map_err(|e| db_err("insert", e))?;
        }
        Ok(r)
    }

    fn delete(&mut self, name: &str, r: &Record) -> Result<()> {
        {
            let mut t = self.tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
            t.remove(name).map_err(|e| db_err("remove", e))?;
        }
        if !r.parent.is_empty() {
            let mut t = self.tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
            t.remove(child_key(&r.parent, name).as_str()).map_err(|e| db_err("remove", e))?;
        }
        Ok(())
    }

    /// Removes `name`; one with children is refused.
    pub fn remove(&mut self, name: &str) -> Result<Record> {
        let r = self.must(name)?;
        let kids = self.children(name)?;
        if !kids.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "cannot remove snapshot {name:?} with child: {} depend on it (first: {:?})",
                kids.len(),
                kids[0]
            )));
        }
        self.delete(name, &r)?;
        Ok(r)
    }

    /// Replaces the labels of `name` (and refreshes its update time).
    pub fn set_labels(&mut self, name: &str, labels: BTreeMap<String, String>) -> Result<Record> {
        let mut r = self.must(name)?;
        r.labels = labels;
        r.updated_ns = now_ns();
        self.put(name, &r)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn containerd_semantics() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("metadata.db")).unwrap();
        let a = s.write(|w| w.create("a", "", Kind::Active, labels(&[("x", "1")]))).unwrap();
        assert_eq!(a.id, 1);
        // a parent must exist and be committed
        assert!(matches!(s.write(|w| w.create("b", "a", Kind::Active, labels(&[]))), Err(Error::InvalidArgument(_))));
        assert!(matches!(s.write(|w| w.create("b", "zz", Kind::Active, labels(&[]))), Err(Error::NotFound(_))));
        assert!(matches!(s.write(|w| w.create("a", "", Kind::Active, labels(&[]))), Err(Error::AlreadyExists(_))));
        let c = s.write(|w| w.commit_active("a", "A", labels(&[("y", "2")]), 10, 2)).unwrap();
        assert_eq!((c.id, c.kind, c.size), (1, Kind::Committed, 10));
        assert_eq!(c.label("x"), None, "commit replaces the labels");
        assert!(s.read(|r| r.get("a")).unwrap().is_none());
        let b = s.write(|w| w.create("b", "A", Kind::View, labels(&[]))).unwrap();
        assert_eq!(b.id, 2, "failed creates roll their id back; commit keeps the id");
        assert_eq!(s.read(|r| r.children("A")).unwrap(), vec!["b".to_string()]);
        let e = s.write(|w| w.remove("A")).unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)) && e.to_string().contains("remove"), "{e}");
        assert!(matches!(s.write(|w| w.commit_active("b", "B", labels(&[]), 0, 0)), Err(Error::FailedPrecondition(_))));
        s.write(|w| w.remove("b")).unwrap();
        s.write(|w| w.remove("A")).unwrap();
        assert!(s.read(|r| r.all()).unwrap().is_empty());
    }

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metadata.db");
        let s = Store::open(&p).unwrap();
        let r: Result<()> = s.write(|w| {
            w.create("a", "", Kind::Active, BTreeMap::new())?;
            Err(Error::InvalidArgument("later step failed".into()))
        });
        assert!(r.is_err());
        assert!(s.read(|r| r.get("a")).unwrap().is_none());
        drop(s);
        // and the store reopens with what was committed
        let s = Store::open(&p).unwrap();
        let r = s.write(|w| w.create("a", "", Kind::Active, BTreeMap::new())).unwrap();
        assert_eq!(r.id, 1);
    }
}
