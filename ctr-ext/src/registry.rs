//! Registry reads for `rpull` (through `oci-client`): the fully qualified reference, the top
//! document (index or manifest), manifests by digest, the config and layer blobs.

use std::time::Duration;

use futures::{Stream, StreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::cli::RegistryFlags;
use crate::error::{chain, Error, Result};
use crate::manifest::{digest_of, is_sha256, Descriptor, ACCEPTED, MAX_DOCUMENT};

/// Bound of connecting to the registry.
pub const CONNECT: Duration = Duration::from_secs(15);
/// Bound of a wait for data from the registry.
pub const READ: Duration = Duration::from_secs(60);
/// Bound of a whole document request.
pub const DOCUMENT: Duration = Duration::from_secs(120);

/// Checks that `s` names an image with its registry host and a tag or digest, as the
/// snapshotter needs it (it becomes the layers' blob URL), and parses it.
///
/// Parsed here rather than with the `Reference` parser, whose regular expression takes longer
/// to build than the rest of an `rpull` start-up.
pub fn parse_reference(s: &str) -> Result<Reference> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "image reference {s:?}: {why}; give it fully qualified, e.g. registry.example.com/repo/name:tag \
             or registry.example.com/repo/name@sha256:<digest>"
        ))
    };
    let (host, rest) = s.split_once('/').ok_or_else(|| bad("no registry host"))?;
    if host.is_empty() || !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(bad(&format!("{host:?} is not a registry host")));
    }
    if !is_host(host) {
        return Err(bad(&format!("{host:?} is not a valid registry host")));
    }
    let (name_tag, digest) = match rest.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (rest, None),
    };
    let (repo, tag) = match name_tag.rfind(':') {
        Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(&name_tag[i + 1..])),
        _ => (name_tag, None),
    };
    if tag.is_none() && digest.is_none() {
        return Err(bad("no tag or digest"));
    }
    if repo.is_empty() || !repo.split('/').all(is_path_component) {
        return Err(bad(&format!("{repo:?} is not a valid repository (lowercase letters, digits and separators)")));
    }
    if host.len() + 1 + repo.len() > 255 {
        return Err(bad("the name is longer than 255 characters"));
    }
    if let Some(t) = tag.filter(|t| !is_tag(t)) {
        return Err(bad(&format!("{t:?} is not a valid tag")));
    }
    if let Some(d) = digest.filter(|d| !is_sha256(d)) {
        return Err(bad(&format!("unsupported digest {d:?}")));
    }
    // as the reference grammar reads Docker Hub names
    let (host, repo) = match host {
        "docker.io" | "index.docker.io" if !repo.contains('/') => ("docker.io", format!("library/{repo}")),
        "index.docker.io" => ("docker.io", repo.to_string()),
        h => (h, repo.to_string()),
    };
    let host = host.to_string();
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(host, repo, t.to_string(), d.to_string()),
        (Some(t), None) => Reference::with_tag(host, repo, t.to_string()),
        (None, Some(d)) => Reference::with_digest(host, repo, d.to_string()),
        (None, None) => unreachable!("checked above"),
    })
}

/// A registry host: DNS labels (letters, digits, inner dashes) joined by dots, and a port.
fn is_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A repository path component: lowercase letters and digits in runs joined by `.`, `_`, `__`
/// or dashes.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A tag: a word character, then up to 127 word characters, dots or dashes.
fn is_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// A registry client for one image reference.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
    shown: String,
}

impl Registry {
    /// A client for `reference` with the access the flags give.
    pub fn new(reference: Reference, shown: &str, flags: &RegistryFlags) -> Result<Registry> {
        if let Some(why) = flags.unsupported() {
            return Err(Error::Usage(why));
        }
        let auth = match flags.user.as_deref() {
            None => RegistryAuth::Anonymous,
            Some(u) => match u.split_once(':') {
                Some((user, pass)) if !user.is_empty() => RegistryAuth::Basic(user.to_string(), pass.to_string()),
                _ => {
                    return Err(Error::Usage(
                        "--user: give user:password (ctr-obd does not prompt for passwords)".into(),
                    ))
                }
            },
        };
        let mut extra_root_certificates = Vec::new();
        if let Some(ca) = &flags.tlscacert {
            let data = std::fs::read(ca).map_err(|e| Error::io(ca.display(), e))?;
            extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        let config = ClientConfig {
            protocol: if flags.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            accept_invalid_certificates: flags.skip_verify,
            extra_root_certificates,
            connect_timeout: Some(CONNECT),
            read_timeout: Some(READ),
            platform_resolver: None,
            ..Default::default()
        };
        Ok(Registry { client: Client::new(config), auth, reference, shown: shown.to_string() })
    }

    /// The registry host, as in the reference.
    pub fn host(&self) -> &str {
        self.reference.registry()
    }

    /// The repository.
    pub fn repository(&self) -> &str {
        self.reference.repository()
    }

    fn fail(&self, what: String) -> Error {
        Error::Registry { reference: self.shown.clone(), what }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        bound: Duration,
        fut: impl std::future::Future<Output = std::result::Result<T, oci_client::errors::OciDistributionError>>,
    ) -> Result<T> {
        match tokio::time::timeout(bound, fut).await {
            Err(_) => Err(Error::Timeout { what: format!("registry {}: {what}", self.shown), after: bound }),
            Ok(Err(e)) => Err(self.fail(format!("{what}: {}", chain(&e)))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// The document the reference names (by its tag or digest), with its digest checked
    /// against a digest reference.
    pub async fn top(&self) -> Result<(Vec<u8>, String)> {
        let (bytes, _) = self
            .bounded(
                "fetching the manifest",
                DOCUMENT,
                self.client.pull_manifest_raw(&self.reference, &self.auth, &ACCEPTED),
            )
            .await?;
        let digest = digest_of(&bytes);
        if let Some(want) = self.reference.digest() {
            if want != digest {
                return Err(self.fail(format!("the registry served {digest} for {want}")));
            }
        }
        Ok((bytes.to_vec(), digest))
    }

    /// The manifest `desc` (digest and size checked).
    pub async fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > MAX_DOCUMENT {
            return Err(self.fail(format!("manifest {} is {} bytes: too large", desc.digest, desc.size)));
        }
        let r = self.reference.clone_with_digest(desc.digest.clone());
        let what = format!("fetching manifest {}", desc.digest);
        let (bytes, _) =
            self.bounded(&what, DOCUMENT, self.client.pull_manifest_raw(&r, &self.auth, &ACCEPTED)).await?;
        let got = digest_of(&bytes);
        if got != desc.digest || bytes.len() as u64 != desc.size {
            return Err(self.fail(format!(
                "manifest {} came as {} bytes with digest {got} (want {} bytes)",
                desc.digest,
                bytes.len(),
                desc.size
            )));
        }
        Ok(bytes.to_vec())
    }

    /// The small blob `desc` (a config) in memory, digest and size checked.
    pub async fn small_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > MAX_DOCUMENT {
            return Err(self.fail(format!("blob {} is {} bytes: too large for a config", desc.digest, desc.size)));
        }
        self.client.store_auth_if_needed(self.reference.resolve_registry(), &self.auth).await;
        let mut out = Vec::with_capacity(desc.size as usize);
        let what = format!("fetching blob {}", desc.digest);
        self.bounded(&what, DOCUMENT, self.client.pull_blob(&self.reference, &oci(desc), &mut out)).await?;
        if out.len() as u64 != desc.size {
            return Err(self.fail(format!("blob {} came as {} bytes, not {}", desc.digest, out.len(), desc.size)));
        }
        Ok(out)
    }

    /// The blob `desc` as a stream of pieces (its digest is checked by whoever stores it).
    pub async fn blob_stream(&self, desc: &Descriptor) -> Result<impl Stream<Item = Result<Vec<u8>>> + Unpin> {
        self.client.store_auth_if_needed(self.reference.resolve_registry(), &self.auth).await;
        let what = format!("fetching blob {}", desc.digest);
        let s = self.bounded(&what, DOCUMENT, self.client.pull_blob_stream(&self.reference, &oci(desc))).await?;
        let shown = self.shown.clone();
        let digest = desc.digest.clone();
        Ok(s.map(move |r| {
            r.map(|b| b.to_vec()).map_err(|e| Error::Registry {
                reference: shown.clone(),
                what: format!("reading blob {digest}: {}", chain(&e)),
            })
        }))
    }
}

fn oci(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_must_be_fully_qualified() {
        let r = parse_reference("127.0.0.1:5000/test/bb:obd").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "test/bb", Some("obd")));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("registry.example.com/x@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        for bad in
            ["busybox", "busybox:latest", "library/busybox:1", "example.com/x", "localhost:5000/a", "h.io/A:b", ""]
        {
            let e = parse_reference(bad).unwrap_err().to_string();
            assert!(e.contains("fully qualified"), "{bad}: {e}");
        }
        assert!(parse_reference("localhost/a:b").is_ok());
    }

    #[test]
    fn references_parse_as_the_reference_grammar_does() {
        let d = format!("sha256:{}", "b".repeat(64));
        for s in [
            "127.0.0.1:5000/test/bb:obd".to_string(),
            "registry.example.com/a/b-c/d__e.f_g:v1.2-rc_3".to_string(),
            format!("registry.example.com/x@{d}"),
            format!("r.example:443/x/y:t@{d}"),
            "docker.io/busybox:1".to_string(),
            "index.docker.io/library/busybox:1".to_string(),
            "docker.io/team/app:x".to_string(),
        ] {
            let ours = parse_reference(&s).unwrap();
            let theirs: Reference = s.parse().unwrap();
            assert_eq!(
                (ours.registry(), ours.repository(), ours.tag(), ours.digest()),
                (theirs.registry(), theirs.repository(), theirs.tag(), theirs.digest()),
                "{s}"
            );
        }
        for bad in [
            "h.io/a//b:t",
            "h.io/a..b:t",
            "h.io/a___b:t",
            "h.io/-a:t",
            "h.io/a-:t",
            "h.io/a:.t",
            "h.io/a:t@sha256:00",
            "h-.io/a:t",
            "h.io:x/a:t",
            "h.io/a:",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
            assert!(bad.parse::<Reference>().is_err() || bad.contains("sha256"), "the grammar takes {bad}");
        }
    }
}
