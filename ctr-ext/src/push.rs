//! `ctr-obd push [registry flags] REMOTE [LOCAL]`: pushes an image of containerd's store to a
//! registry, as `ctr image push` does, also when its layers were pulled lazily (`rpull` keeps
//! no layer blob in the content store) — the usual way to publish the image `record-trace`
//! makes. Each blob (layers, then config) is:
//!
//! * skipped when the target repository has it already;
//! * uploaded from the content store when it is there;
//! * otherwise mounted from a repository of the same registry the image was pulled from (the
//!   manifest's `containerd.io/distribution.source.<host>` label), which needs no data;
//! * otherwise an error naming the blob, before the manifest is pushed (so no tag ever points
//!   at an incomplete image).

use std::path::Path;
use std::time::Duration;

use convertor::registry::{Access, Registry};
use oci_client::Reference;

use crate::bounded::{self, Cut};
use crate::cli::PushArgs;
use crate::containerd::{unique, Containerd};
use crate::content;
use crate::error::{Error, Result};
use crate::images;
use crate::manifest::{self, Descriptor, Kind, Manifest};
use crate::registry::parse_reference;

/// What happened to one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The repository had it.
    Exists,
    /// Uploaded from the content store.
    Uploaded,
    /// Mounted from another repository of the registry.
    Mounted,
}

impl Sent {
    fn as_str(self) -> &'static str {
        match self {
            Sent::Exists => "already in the repository",
            Sent::Uploaded => "uploaded",
            Sent::Mounted => "mounted from the source repository",
        }
    }
}

/// Runs `push`; the lines to print.
pub async fn run(address: &Path, namespace: &str, limit: Option<Duration>, args: &PushArgs) -> Result<Vec<String>> {
    if let Some(why) = args.registry.unsupported() {
        return Err(Error::Usage(why));
    }
    let remote = parse_reference(&args.remote)?;
    let local = args.local.clone().unwrap_or_else(|| args.remote.clone());
    let cd = Containerd::connect(address, namespace).await?;
    let mut current = None;
    match bounded::run(limit, push(&cd, &remote, &local, args, &mut current)).await {
        Ok(r) => r,
        Err(cut) => {
            let during = current.map(|w| format!(" while {w}")).unwrap_or_default();
            let what = format!("push {}{during}", args.remote);
            Err(match cut {
                Cut::Timeout(after) => Error::Timeout { what, after },
                Cut::Interrupted => Error::Interrupted(what),
            })
        }
    }
}

fn registry_error(remote: &Reference, e: convertor::Error) -> Error {
    Error::Registry { reference: remote.to_string(), what: e.to_string() }
}

async fn push(
    cd: &Containerd,
    remote: &Reference,
    local: &str,
    args: &PushArgs,
    current: &mut Option<String>,
) -> Result<Vec<String>> {
    let image = images::get(cd, local)
        .await?
        .ok_or_else(|| Error::Usage(format!("image {local:?} is not in containerd's store (namespace)")))?;
    let target = Descriptor::from_containerd(
        image.target.as_ref().ok_or_else(|| Error::Image(format!("image {local} has no target")))?,
    );
    let top = content::read_all(cd, &target).await?;
    let what = format!("{local}: {}", target.digest);
    let doc = manifest::parse(&top, &what)?;
    let (kind, media_type) = manifest::kind(&doc, &target.media_type, &what)?;
    if kind != Kind::Manifest {
        return Err(Error::Usage(format!(
            "{local} is an index: ctr-obd push pushes one manifest; push the platform's manifest by its digest \
             as LOCAL, or the whole index with ctr image push"
        )));
    }
    let m = Manifest::from_json(&doc, &what)?;
    let access = Access {
        user: args.registry.user.clone().unwrap_or_default(),
        plain_http: args.registry.plain_http,
        insecure: args.registry.skip_verify,
        root_cas: args.registry.tlscacert.iter().cloned().collect(),
    };
    let reg = Registry::new(remote.registry(), &access).map_err(|e| registry_error(remote, e))?;
    reg.auth_push(remote).await.map_err(|e| registry_error(remote, e))?;
    let sources = source_repositories(cd, &target.digest, remote).await?;

    let work = std::env::temp_dir().join(format!("ctr-obd-push-{}", unique()));
    std::fs::create_dir_all(&work).map_err(|e| Error::io(work.display(), e))?;
    let mut lines = Vec::new();
    let mut result = Ok(());
    let blobs =
        m.layers.iter().enumerate().map(|(i, l)| (format!("layer {i}"), l)).chain([("config".into(), &m.config)]);
    for (name, blob) in blobs {
        *current = Some(format!("pushing {name} {}", blob.digest));
        match send(cd, &reg, remote, &sources, blob, &work).await {
            Ok(s) => lines.push(format!("{name} {}: {}", blob.digest, s.as_str())),
            Err(e) => {
                result = Err(match e {
                    Error::Image(why) => Error::Image(format!("{name} {}: {why}", blob.digest)),
                    e => e,
                });
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    result?;
    *current = Some("pushing the manifest".into());
    reg.push_document(remote, top, &media_type).await.map_err(|e| registry_error(remote, e))?;
    lines.push(format!("pushed {remote} ({})", target.digest));
    Ok(lines)
}

/// The repositories of `remote`'s registry the image was pulled from (other than `remote`'s):
/// the manifest's `containerd.io/distribution.source.<host>` label, a comma-separated list.
async fn source_repositories(cd: &Containerd, manifest: &str, remote: &Reference) -> Result<Vec<Reference>> {
    let Some(info) = content::info(cd, manifest).await? else { return Ok(Vec::new()) };
    let key = format!("containerd.io/distribution.source.{}", remote.registry());
    let repos = info.labels.get(&key).map(String::as_str).unwrap_or_default();
    Ok(repos
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty() && *r != remote.repository())
        .map(|r| Reference::with_tag(remote.registry().to_string(), r.to_string(), "latest".into()))
        .collect())
}

/// Puts blob `d` into `remote`'s repository (see the module's documentation).
async fn send(
    cd: &Containerd,
    reg: &Registry,
    remote: &Reference,
    sources: &[Reference],
    d: &Descriptor,
    work: &Path,
) -> Result<Sent> {
    if reg.has_blob(remote, &d.digest).await.map_err(|e| registry_error(remote, e))? {
        return Ok(Sent::Exists);
    }
    if content::info(cd, &d.digest).await?.is_some() {
        let file = work.join(d.digest.trim_start_matches("sha256:"));
        content::read_to_file(cd, d, &file).await?;
        let pushed = reg.push_file(remote, &file, &d.digest, d.size).await;
        let _ = std::fs::remove_file(&file);
        pushed.map_err(|e| registry_error(remote, e))?;
        return Ok(Sent::Uploaded);
    }
    for from in sources {
        if reg.mount_blob(remote, from, &d.digest).await {
            return Ok(Sent::Mounted);
        }
    }
    let tried = if sources.is_empty() {
        format!("the image names no source repository on {}", remote.registry())
    } else {
        let names: Vec<&str> = sources.iter().map(Reference::repository).collect();
        format!("mounting it from {} failed", names.join(", "))
    };
    Err(Error::Image(format!(
        "not in containerd's content store (a lazily pulled layer) and not in {}/{}, and {tried}: fetch it first \
         (ctr content fetch) or push to the registry it came from",
        remote.registry(),
        remote.repository()
    )))
}
