//! Byte ranges of registry blobs over HTTP(S): `GET <repoBlobUrl>/<digest>` with a `Range`
//! header, following redirects to blob storage, authenticating as the registry asks
//! (anonymous, Basic, or a Bearer token from its realm), under the [`RetryPolicy`].

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_RANGE, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::auth::{parse_challenge, Challenge, Token};
use super::credentials::{registry_path, Credential, Credentials};
use super::retry::{Failure, RetryPolicy};
use crate::{Error, Result};

/// Settings of a [`RegistryClient`].
#[derive(Clone)]
pub struct ClientOptions {
    /// Credentials (none: anonymous, unless the registry asks and there is nothing to give).
    pub credentials: Option<Arc<dyn Credentials>>,
    /// Extra CA certificates (PEM) to trust, besides the built-in roots.
    pub extra_roots_pem: Vec<Vec<u8>>,
    /// The retry policy.
    pub retry: RetryPolicy,
    /// Connecting may take this long.
    pub connect_timeout: Duration,
    /// One request (headers and body) may take this long.
    pub request_timeout: Duration,
    /// User-Agent.
    pub user_agent: String,
    /// Mirrors tried before the registry: each replaces the scheme and host of a blob URL
    /// (`https://mirror.example:5000`).
    pub mirrors: Vec<String>,
    /// A P2P proxy prefix tried first (the reference's `p2pConfig.address`): the request goes
    /// to `<prefix>/<blob URL>`.
    pub p2p_prefix: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: None,
            extra_roots_pem: Vec::new(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            user_agent: format!("overlaybd-rs/{}", env!("CARGO_PKG_VERSION")),
            mirrors: Vec::new(),
            p2p_prefix: None,
        }
    }
}

/// Reads registry blobs by range; shared by all the layers of a process.
pub struct RegistryClient {
    http: Client,
    opts: ClientOptions,
    /// The `Authorization` value to send, per registry path (`host/repository`).
    auth: Mutex<HashMap<String, Authorization>>,
    /// Loopback hosts found to speak plain HTTP.
    plain_hosts: Mutex<std::collections::HashSet<String>>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_hosts_fall_back_to_plain_http() {
        for h in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "[::1]"] {
            assert!(super::is_loopback(h), "{h}");
        }
        for h in ["registry.example.com", "10.0.0.1:5000", "[fe80::1]:5000", "localhost.example.com:5000"] {
            assert!(!super::is_loopback(h), "{h}");
        }
        assert_eq!(super::host_of("https://127.0.0.1:5000/v2/a/blobs/x"), Some("127.0.0.1:5000"));
    }
}

#[derive(Clone)]
enum Authorization {
    Basic(HeaderValue),
    Bearer { token: Token, challenge: Challenge },
}

/// What one try came to.
type Try<T> = std::result::Result<T, Failure<Error>>;

fn transient(what: &str, e: impl std::fmt::Display) -> Failure<Error> {
    Failure::Transient(Error::io("registry", what, std::io::Error::other(e.to_string())))
}

fn permanent(what: &str, e: impl std::fmt::Display) -> Failure<Error> {
    Failure::Permanent(Error::io("registry", what, std::io::Error::other(e.to_string())))
}

impl RegistryClient {
    /// A client with `opts`.
    pub fn new(opts: ClientOptions) -> Result<Self> {
        let mut b = Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .user_agent(opts.user_agent.clone())
            .redirect(reqwest::redirect::Policy::limited(10));
        for pem in &opts.extra_roots_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::InvalidArgument(format!("a CA certificate is not valid PEM: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(|e| Error::InvalidArgument(format!("cannot make the HTTP client: {e}")))?;
        Ok(RegistryClient { http, opts, auth: Mutex::new(HashMap::new()), plain_hosts: Mutex::default() })
    }

    /// `len` bytes of blob `digest` under `repo_blob_url`, from `offset`.
    pub fn read_range(&self, repo_blob_url: &str, digest: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let url = format!("{}/{digest}", repo_blob_url.trim_end_matches('/'));
        let what = format!("{url} bytes {offset}+{len}");
        let candidates = self.candidates(&url);
        self.opts.retry.run(&what, |_| self.try_candidates(&candidates, offset, len)).map_err(|(e, tries)| {
            Error::io(
                &url,
                format!("read bytes {offset}..{} ({tries} tries)", offset + len as u64),
                std::io::Error::other(e.to_string()),
            )
        })
    }

    /// Reads `len` bytes of blob `digest` at `offset` with one request (under the retry
    /// policy), handing them to `sink` in order, in pieces of `piece` bytes (the last may be
    /// shorter), each as soon as it has arrived. A try that fails part-way goes on from the
    /// first piece not handed over, so `sink` sees every piece once.
    pub fn read_range_pieces(
        &self,
        repo_blob_url: &str,
        digest: &str,
        offset: u64,
        len: u64,
        piece: usize,
        sink: &mut dyn FnMut(Vec<u8>),
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let url = format!("{}/{digest}", repo_blob_url.trim_end_matches('/'));
        let what = format!("{url} bytes {offset}+{len}");
        let candidates = self.candidates(&url);
        let mut done = 0u64;
        self.opts
            .retry
            .run(&what, |_| {
                let mut transient_seen = false;
                let mut last = None;
                for c in &candidates {
                    let before = done;
                    match self.try_pieces(c, offset + done, len - done, piece, &mut done, sink) {
                        Ok(()) => return Ok(()),
                        // pieces came before the failure: retry this source from there
                        Err(Failure::Transient(e)) if done > before => return Err(Failure::Transient(e)),
                        Err(Failure::Transient(e)) => {
                            transient_seen = true;
                            last = Some(e);
                        }
                        Err(Failure::Permanent(e)) => last = Some(e),
                    }
                }
                let e = last.unwrap_or_else(|| Error::InvalidArgument("no URL to read from".into()));
                Err(if transient_seen { Failure::Transient(e) } else { Failure::Permanent(e) })
            })
            .map_err(|(e, tries)| {
                Error::io(
                    &url,
                    format!("read bytes {offset}..{} ({tries} tries)", offset + len),
                    std::io::Error::other(e.to_string()),
                )
            })
    }

    /// One try of [`read_range_pieces`](Self::read_range_pieces): bytes `offset..offset+len`,
    /// counting what reached `sink` in `done`.
    fn try_pieces(
        &self,
        url: &str,
        offset: u64,
        len: u64,
        piece: usize,
        done: &mut u64,
        sink: &mut dyn FnMut(Vec<u8>),
    ) -> Try<()> {
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let resp = self.send(url, |c, u| c.get(u).header(RANGE, range.as_str()))?;
        let mut body: Box<dyn Read> = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(transient("GET", format!("answer for the wrong range ({start:?}, asked {offset})")));
                }
                Box::new(resp.take(len))
            }
            StatusCode::OK => {
                // Range ignored: skip to the offset, take what was asked.
                let mut r = resp;
                std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())
                    .map_err(|e| transient("read the body", e))?;
                Box::new(r.take(len))
            }
            s => return Err(status_failure(s)),
        };
        let mut left = len;
        while left > 0 {
            let want = (piece as u64).min(left) as usize;
            let mut buf = Vec::with_capacity(want);
            (&mut body).take(want as u64).read_to_end(&mut buf).map_err(|e| transient("read the body", e))?;
            if buf.len() != want {
                return Err(transient("GET", format!("short body: {} of {len} bytes", len - left + buf.len() as u64)));
            }
            left -= want as u64;
            *done += want as u64;
            sink(buf);
        }
        Ok(())
    }

    /// The size of blob `digest` (a HEAD request).
    pub fn blob_size(&self, repo_blob_url: &str, digest: &str) -> Result<u64> {
        let url = format!("{}/{digest}", repo_blob_url.trim_end_matches('/'));
        self.opts
            .retry
            .run(&url, |_| {
                let resp = self.send(&url, |c, u| c.head(u))?;
                if !resp.status().is_success() {
                    return Err(status_failure(resp.status()));
                }
                // (reqwest's content_length() is the body's, which a HEAD answer has none of)
                resp.headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| permanent("HEAD", "no Content-Length"))
            })
            .map_err(|(e, _)| Error::io(&url, "get the blob size", std::io::Error::other(e.to_string())))
    }

    /// Where to ask, in order: the P2P proxy, the mirrors, the registry.
    fn candidates(&self, url: &str) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(p) = &self.opts.p2p_prefix {
            v.push(format!("{}/{url}", p.trim_end_matches('/')));
        }
        if let Some((_, rest)) = url.split_once("://") {
            let path = rest.split_once('/').map_or("", |(_, p)| p);
            for m in &self.opts.mirrors {
                v.push(format!("{}/{path}", m.trim_end_matches('/')));
            }
        }
        v.push(url.to_string());
        v
    }

    /// One try over the candidates: the first that answers wins; transient if any failure was.
    fn try_candidates(&self, candidates: &[String], offset: u64, len: usize) -> Try<Vec<u8>> {
        let mut transient_seen = false;
        let mut last = None;
        for c in candidates {
            match self.try_range(c, offset, len) {
                Ok(v) => return Ok(v),
                Err(Failure::Transient(e)) => {
                    if candidates.len() > 1 {
                        tracing::debug!(url = %c, error = %e, "falling back");
                    }
                    transient_seen = true;
                    last = Some(e);
                }
                Err(Failure::Permanent(e)) => {
                    if candidates.len() > 1 {
                        tracing::debug!(url = %c, error = %e, "falling back");
                    }
                    last = Some(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| Error::InvalidArgument("no URL to read from".into()));
        Err(if transient_seen { Failure::Transient(e) } else { Failure::Permanent(e) })
    }

    /// One try of a range read: the whole range as one piece.
    fn try_range(&self, url: &str, offset: u64, len: usize) -> Try<Vec<u8>> {
        let mut body = Vec::new();
        self.try_pieces(url, offset, len as u64, len, &mut 0, &mut |p| body = p)?;
        Ok(body)
    }

    /// Sends a request built by `make` for a URL (`url`, or its plain-HTTP form for a loopback
    /// registry that speaks no TLS), authenticating as the registry asks (at most twice).
    fn send(&self, url: &str, make: impl Fn(&Client, &str) -> reqwest::blocking::RequestBuilder) -> Try<Response> {
        let key = registry_path(url).unwrap_or_else(|| url.to_string());
        let mut url = self.plain_form(url).unwrap_or_else(|| url.to_string());
        let mut fresh_credentials = false;
        for round in 0..3 {
            let with_auth = |u: &str| -> Try<reqwest::blocking::RequestBuilder> {
                let mut req = make(&self.http, u);
                if let Some(v) = self.current_auth(&key)? {
                    req = req.header(AUTHORIZATION, v);
                }
                Ok(req)
            };
            let resp = match with_auth(&url)?.send() {
                Ok(r) => r,
                Err(e) => match plain_http_fallback(&url, &e) {
                    Some(plain) => match with_auth(&plain)?.send() {
                        Ok(r) => {
                            let host = host_of(&plain).unwrap_or_default().to_string();
                            tracing::info!(%host, "the loopback registry speaks plain HTTP: using http://");
                            self.plain_hosts.lock().unwrap_or_else(|p| p.into_inner()).insert(host);
                            url = plain;
                            r
                        }
                        Err(_) => return Err(transient("send", e)),
                    },
                    None => return Err(transient("send", e)),
                },
            };
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
                .ok_or_else(|| permanent("authenticate", format!("{url}: 401 without a usable WWW-Authenticate")))?;
            if round == 2 || (fresh_credentials && round > 0) {
                let source =
                    self.opts.credentials.as_ref().map_or("no credentials configured".to_string(), |c| c.describe());
                tracing::error!(registry = %key, %source, "authentication failed");
                return Err(permanent("authenticate", format!("{key}: authentication failed with {source}")));
            }
            // Re-read the credentials (a rotated password is picked up) and authenticate anew.
            let cred = self.credential(&url)?;
            fresh_credentials = true;
            self.authenticate(&key, &url, &challenge, cred.as_ref())?;
        }
        Err(permanent("authenticate", format!("{key}: authentication failed")))
    }

    /// `url` over plain HTTP when its (loopback) host was found to speak no TLS.
    fn plain_form(&self, url: &str) -> Option<String> {
        let rest = url.strip_prefix("https://")?;
        let host = host_of(url)?;
        self.plain_hosts.lock().unwrap_or_else(|p| p.into_inner()).contains(host).then(|| format!("http://{rest}"))
    }

    fn credential(&self, url: &str) -> Try<Option<Credential>> {
        match &self.opts.credentials {
            Some(f) => f.lookup(url).map_err(Failure::Permanent),
            None => Ok(None),
        }
    }

    /// The Authorization value for `key`, renewing an expired token first.
    fn current_auth(&self, key: &str) -> Try<Option<HeaderValue>> {
        let entry = self.auth.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        match entry {
            None => Ok(None),
            Some(Authorization::Basic(v)) => Ok(Some(v)),
            Some(Authorization::Bearer { token, challenge }) => {
                if !token.expired(Instant::now()) {
                    return Ok(Some(bearer(&token.value)?));
                }
                let url = format!("https://{key}");
                let cred = self.credential(&url)?;
                let token = self.fetch_token(&challenge, cred.as_ref())?;
                let v = bearer(&token.value)?;
                self.auth
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.to_string(), Authorization::Bearer { token, challenge });
                Ok(Some(v))
            }
        }
    }

    fn authenticate(&self, key: &str, url: &str, challenge: &Challenge, cred: Option<&Credential>) -> Try<()> {
        let auth = match challenge {
            Challenge::Basic => {
                let c = cred.ok_or_else(|| {
                    permanent("authenticate", format!("{key} asks for a password and there is no credential for it"))
                })?;
                Authorization::Basic(basic(c)?)
            }
            Challenge::Bearer { realm, service, scope } => {
                let scope = scope.clone().or_else(|| {
                    registry_path(url)
                        .and_then(|p| p.split_once('/').map(|(_, repo)| format!("repository:{repo}:pull")))
                });
                let challenge = Challenge::Bearer { realm: realm.clone(), service: service.clone(), scope };
                let token = self.fetch_token(&challenge, cred)?;
                Authorization::Bearer { token, challenge }
            }
        };
        self.auth.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), auth);
        Ok(())
    }

    fn fetch_token(&self, challenge: &Challenge, cred: Option<&Credential>) -> Try<Token> {
        let Challenge::Bearer { realm, service, scope } = challenge else {
            return Err(permanent("token", "not a Bearer challenge"));
        };
        let mut req = self.http.get(realm.as_str());
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(("service", s.as_str()));
        }
        if let Some(s) = scope {
            query.push(("scope", s.as_str()));
        }
        req = req.query(&query);
        if let Some(c) = cred {
            req = req.header(AUTHORIZATION, basic(c)?);
        }
        let resp = req.send().map_err(|e| transient("get a token", e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    permanent("get a token", format!("{realm} refused the credentials ({status})"))
                }
                s => status_failure(s),
            });
        }
        let body = resp.bytes().map_err(|e| transient("read the token", e))?;
        Token::from_json(&body, Instant::now())
            .ok_or_else(|| permanent("get a token", format!("{realm} sent no token")))
    }
}

fn basic(c: &Credential) -> Try<HeaderValue> {
    let v =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password)));
    HeaderValue::from_str(&v).map_err(|_| permanent("authenticate", "the credential holds characters a header cannot"))
}

fn bearer(t: &str) -> Try<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {t}"))
        .map_err(|_| permanent("authenticate", "the token holds characters a header cannot"))
}

/// `host[:port]` of a URL.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Whether `host[:port]` is this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => {
            host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
        }
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The plain-HTTP form of an `https://` URL of a loopback registry whose TLS handshake failed
/// (as Docker and containerd treat local registries): a registry started on this machine
/// without TLS works with the image reference users type, while remote hosts never lose TLS.
fn plain_http_fallback(url: &str, e: &reqwest::Error) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    (e.is_connect() && !e.is_timeout() && host_of(url).is_some_and(is_loopback)).then(|| format!("http://{rest}"))
}

/// Which statuses are worth another try.
fn status_failure(s: StatusCode) -> Failure<Error> {
    if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT {
        transient("GET", format!("HTTP {s}"))
    } else {
        permanent("GET", format!("HTTP {s}"))
    }
}
