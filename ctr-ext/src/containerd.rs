//! The connection to containerd: the client over its unix socket, the namespace and lease
//! carried as gRPC metadata on every call, bounded calls, and leases.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::{AddResourceRequest, CreateRequest, DeleteRequest, Resource};
use containerd_client::tonic::metadata::MetadataValue;
use containerd_client::tonic::{Request, Response, Status};
use containerd_client::Client;

use crate::error::{chain, Error, Result};

/// Bound of a quick call (stat, info, create, update, remove).
pub const QUICK: Duration = Duration::from_secs(60);
/// Bound of a garbage collection.
pub const GC: Duration = Duration::from_secs(300);
/// Bound of connecting to the socket.
pub const CONNECT: Duration = Duration::from_secs(10);

/// The label that makes containerd's collector drop a lease at a time (RFC 3339).
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

/// A containerd client bound to a namespace and, once taken, a lease.
pub struct Containerd {
    client: Client,
    namespace: String,
    lease: Option<String>,
}

impl Containerd {
    /// Connects to the socket at `address` for `namespace`.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Containerd> {
        let fail = |what: String| Error::Connect { address: address.display().to_string(), what };
        if namespace.is_empty() || MetadataValue::try_from(namespace).is_err() {
            return Err(Error::Usage(format!("namespace {namespace:?} is not a valid containerd namespace")));
        }
        if !address.exists() {
            return Err(fail("no such socket (is containerd running? see --address)".into()));
        }
        let client = tokio::time::timeout(CONNECT, Client::from_path(address))
            .await
            .map_err(|_| fail(format!("no answer within {} s", CONNECT.as_secs())))?
            .map_err(|e| fail(chain(&e)))?;
        Ok(Containerd { client, namespace: namespace.to_string(), lease: None })
    }

    /// The generated clients.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `msg` as a request in the namespace (and lease), for at most `bound` on the server too.
    pub fn request<T>(&self, msg: T, bound: Duration) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(bound);
        let md = r.metadata_mut();
        // both were checked to be valid metadata values when they were set
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            md.insert("containerd-namespace", v);
        }
        if let Some(Ok(v)) = self.lease.as_deref().map(MetadataValue::try_from) {
            md.insert("containerd-lease", v);
        }
        r
    }

    /// Takes a lease `<prefix>-<unique>` that containerd's collector drops after `expire` at
    /// the latest; every later call carries it.
    pub async fn create_lease(&mut self, prefix: &str, expire: Duration) -> Result<String> {
        let id = format!("{prefix}-{}", unique());
        let until = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + expire.as_secs();
        let labels = HashMap::from([(LABEL_GC_EXPIRE.to_string(), rfc3339(until))]);
        let mut c = self.client.leases();
        call(
            &format!("Leases.Create {id}"),
            QUICK,
            c.create(self.request(CreateRequest { id: id.clone(), labels }, QUICK)),
        )
        .await?;
        self.lease = Some(id.clone());
        Ok(id)
    }

    /// Deletes the lease (what it held becomes collectable unless referenced).
    pub async fn delete_lease(&mut self) -> Result<()> {
        let Some(id) = self.lease.take() else { return Ok(()) };
        let mut c = self.client.leases();
        let req = self.request(DeleteRequest { id: id.clone(), sync: false }, QUICK);
        call(&format!("Leases.Delete {id}"), QUICK, c.delete(req)).await.map(|_| ())
    }

    /// Runs containerd's garbage collector now and waits for it (what `ctr image rm --sync`
    /// does): a throwaway lease deleted with `sync`. Snapshots removed through containerd are
    /// removed from the snapshotter only by a collection.
    pub async fn collect_garbage(&self) -> Result<()> {
        let id = format!("ctr-obd-gc-{}", unique());
        let mut c = self.client.leases();
        let req = self.request(CreateRequest { id: id.clone(), labels: HashMap::new() }, QUICK);
        call(&format!("Leases.Create {id}"), QUICK, c.create(req)).await?;
        let req = self.request(DeleteRequest { id: id.clone(), sync: true }, GC);
        call(&format!("Leases.Delete {id} (sync: garbage collection)"), GC, c.delete(req)).await.map(|_| ())
    }

    /// Adds a resource (`content` + digest, or `snapshots/<snapshotter>` + key) to the lease.
    pub async fn add_to_lease(&self, kind: &str, id: &str) -> Result<()> {
        let Some(lease) = self.lease.clone() else { return Ok(()) };
        let mut c = self.client.leases();
        let req = AddResourceRequest {
            id: lease.clone(),
            resource: Some(Resource { id: id.to_string(), r#type: kind.to_string() }),
        };
        call(&format!("Leases.AddResource {lease} {kind} {id}"), QUICK, c.add_resource(self.request(req, QUICK)))
            .await
            .map(|_| ())
    }
}

/// Awaits a containerd call for at most `bound`; its reply, or the error naming `what`.
pub async fn call<T>(
    what: &str,
    bound: Duration,
    fut: impl Future<Output = std::result::Result<Response<T>, Status>>,
) -> Result<T> {
    match tokio::time::timeout(bound, fut).await {
        Err(_) => Err(Error::Timeout { what: format!("containerd {what}"), after: bound }),
        Ok(Err(status)) => Err(Error::Containerd { call: what.to_string(), status }),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// A unique suffix for keys, refs and leases: `<nanoseconds>-<random hex>`.
pub fn unique() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{nanos}-{}", &rand[..12])
}

/// Seconds since the epoch as an RFC 3339 UTC time.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn unique_parts_differ() {
        assert_ne!(unique(), unique());
    }
}
