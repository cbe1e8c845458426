//! Registry credentials in the docker `config.json` format (the reference's `file` mode):
//! `{"auths": {"<host or host/repository prefix>": {"auth": "<base64 user:password>"} |
//! {"username": "...", "password": "..."}}}`. The longest key that is a prefix of
//! `host/repository` (on path-segment boundaries) wins. The file is re-read on every lookup that
//! follows a failed authentication, so a rotated password is picked up without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::{Error, Result};

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User.
    pub username: String,
    /// Password or identity token.
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

#[derive(serde::Deserialize, Default)]
struct Entry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(serde::Deserialize, Default)]
struct File {
    #[serde(default)]
    auths: HashMap<String, Entry>,
}

/// A docker-format credential file.
#[derive(Clone, Debug)]
pub struct CredentialFile {
    path: PathBuf,
}

/// `host/repository` of a blob URL `scheme://host/v2/<repository>/blobs[/...]`.
pub fn registry_path(blob_url: &str) -> Option<String> {
    let rest = blob_url.split_once("://").map_or(blob_url, |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.strip_prefix("v2/").unwrap_or(path);
    let repo = match path.find("/blobs") {
        Some(i) => &path[..i],
        None => path.trim_end_matches('/'),
    };
    if host.is_empty() {
        return None;
    }
    Some(if repo.is_empty() { host.to_string() } else { format!("{host}/{repo}") })
}

/// Normalises a key of `auths`: no scheme, no trailing slash, Docker Hub's v1 URL as its host.
fn normalise_key(k: &str) -> String {
    let k = k.split_once("://").map_or(k, |(_, r)| r).trim_end_matches('/');
    let k = k.strip_suffix("/v1").or_else(|| k.strip_suffix("/v2")).unwrap_or(k);
    if k == "index.docker.io" {
        "registry-1.docker.io".to_string()
    } else {
        k.to_string()
    }
}

impl CredentialFile {
    /// The file at `path` (read at each lookup).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CredentialFile { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credential for `blob_url`; `Ok(None)` if the file has none (or does not exist).
    pub fn lookup(&self, blob_url: &str) -> Result<Option<Credential>> {
        let shown = self.path.display().to_string();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&shown, "read the credential file", e)),
        };
        let file: File = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(&shown, "docker credential file", e.to_string()))?;
        match_auths(&file, blob_url, &shown)
    }
}

/// The credential `file` has for `blob_url` (`shown` names the source in errors).
fn match_auths(file: &File, blob_url: &str, shown: &str) -> Result<Option<Credential>> {
    {
        let Some(target) = registry_path(blob_url) else { return Ok(None) };
        let mut best: Option<(usize, &Entry)> = None;
        for (k, e) in &file.auths {
            let key = normalise_key(k);
            let matches = target == key || target.starts_with(&format!("{key}/"));
            if matches && best.is_none_or(|(len, _)| key.len() > len) {
                best = Some((key.len(), e));
            }
        }
        let Some((_, e)) = best else { return Ok(None) };
        if !e.username.is_empty() || !e.password.is_empty() {
            return Ok(Some(Credential { username: e.username.clone(), password: e.password.clone() }));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(e.auth.trim())
            .map_err(|_| Error::format(shown, "docker credential file", "an \"auth\" value is not base64"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Error::format(shown, "docker credential file", "an \"auth\" value is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| Error::format(shown, "docker credential file", "an \"auth\" value is not user:password"))?;
        Ok(Some(Credential { username: u.to_string(), password: p.to_string() }))
    }
}

/// Where credentials come from.
pub trait Credentials: Send + Sync {
    /// The credential for `blob_url`, if any.
    fn lookup(&self, blob_url: &str) -> Result<Option<Credential>>;
    /// Where they come from, for log lines and errors.
    fn describe(&self) -> String;
}

impl Credentials for CredentialFile {
    fn lookup(&self, blob_url: &str) -> Result<Option<Credential>> {
        CredentialFile::lookup(self, blob_url)
    }
    fn describe(&self) -> String {
        format!("credentials from {}", self.path.display())
    }
}

/// A credential server (the reference's `http` and `https` modes): `GET <url>?remote_url=<blob
/// URL>` answers `{"success": true, "traceId": "...", "data": {"auths": {...}}}`, the `auths`
/// in the docker format.
pub struct CredentialServer {
    url: String,
    http: reqwest::blocking::Client,
}

impl CredentialServer {
    /// A server at `url`, asked with `timeout`; for https, an optional client certificate and
    /// key (PEM) and a CA (PEM) to trust instead of the built-in roots.
    pub fn new(
        url: &str,
        timeout: std::time::Duration,
        client_cert_key_pem: Option<Vec<u8>>,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self> {
        let bad =
            |what: &str, e: reqwest::Error| Error::InvalidArgument(format!("credential server {url}: {what}: {e}"));
        let mut b = reqwest::blocking::Client::builder().timeout(timeout).use_rustls_tls();
        if let Some(pem) = client_cert_key_pem {
            b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| bad("client certificate", e))?);
        }
        if let Some(ca) = ca_pem {
            b = b
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).map_err(|e| bad("CA", e))?);
        }
        Ok(CredentialServer { url: url.to_string(), http: b.build().map_err(|e| bad("client", e))? })
    }
}

impl Credentials for CredentialServer {
    fn lookup(&self, blob_url: &str) -> Result<Option<Credential>> {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            success: bool,
            #[serde(default, rename = "traceId")]
            trace_id: String,
            #[serde(default)]
            data: File,
        }
        let io = |what: &str, e: String| Error::io(&self.url, what, std::io::Error::other(e));
        let resp = self
            .http
            .get(&self.url)
            .query(&[("remote_url", blob_url)])
            .send()
            .map_err(|e| io("ask for credentials", e.to_string()))?;
        if !resp.status().is_success() {
            return Err(io("ask for credentials", format!("HTTP {}", resp.status())));
        }
        let body = resp.bytes().map_err(|e| io("read the credentials", e.to_string()))?;
        let a: Answer = serde_json::from_slice(&body).map_err(|e| io("read the credentials", e.to_string()))?;
        if !a.success {
            return Err(io(
                "ask for credentials",
                format!("the server answered success=false (traceId {})", a.trace_id),
            ));
        }
        match_auths(&a.data, blob_url, &self.url)
    }
    fn describe(&self) -> String {
        format!("credentials from the server {}", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_paths() {
        assert_eq!(registry_path("https://reg:5000/v2/library/foo/blobs").unwrap(), "reg:5000/library/foo");
        assert_eq!(registry_path("http://127.0.0.1:5000/v2/a/b/c/blobs/sha256:x").unwrap(), "127.0.0.1:5000/a/b/c");
        assert_eq!(registry_path("https://reg/v2/").unwrap(), "reg");
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("user2:pw2");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{
                "reg:5000":{{"username":"host","password":"h"}},
                "reg:5000/library":{{"auth":"{b64}"}},
                "reg:5000/lib":{{"username":"wrong","password":"x"}},
                "https://index.docker.io/v1/":{{"username":"hub","password":"d"}}
            }}}}"#
            ),
        )
        .unwrap();
        let f = CredentialFile::new(&path);
        let c = f.lookup("https://reg:5000/v2/library/foo/blobs").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user2", "pw2"));
        assert_eq!(f.lookup("https://reg:5000/v2/other/x/blobs").unwrap().unwrap().username, "host");
        assert_eq!(f.lookup("https://registry-1.docker.io/v2/library/x/blobs").unwrap().unwrap().username, "hub");
        assert!(f.lookup("https://elsewhere/v2/x/blobs").unwrap().is_none());
        assert!(format!("{c:?}").contains("<hidden>") && !format!("{c:?}").contains("pw2"));
        // rotated on disk: the next lookup sees it
        std::fs::write(&path, r#"{"auths":{"reg:5000":{"username":"new","password":"p"}}}"#).unwrap();
        assert_eq!(f.lookup("https://reg:5000/v2/library/foo/blobs").unwrap().unwrap().username, "new");
        // missing file: none; broken file: a clear error
        assert!(CredentialFile::new(dir.path().join("nope")).lookup("https://reg/v2/x/blobs").unwrap().is_none());
        std::fs::write(&path, "{").unwrap();
        assert!(f.lookup("https://reg:5000/v2/x/blobs").unwrap_err().to_string().contains("cred.json"));
    }
}
