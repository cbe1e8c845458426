//! Remote layers against a real registry (Debian's docker-registry, started by the tests).
//!
//! Requests are counted at the fault-injecting proxy, which counts each as it arrives, before
//! answering it (the registry logs a request when its handler ends, which may be after the
//! client got its answer). Read-ahead runs on threads of its own that outlive the reads: a count
//! taken after reads waits for it to be over first ([`RemoteBlob::read_ahead_in_flight`]).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstore::remote::credentials::{CredentialFile, CredentialServer, Credentials};
use backstore::remote::registry::{ClientOptions, RegistryClient};
use common::registry::Registry;
use common::*;

#[test]
fn ranges_of_a_pushed_blob_read_back_exactly() {
    let reg = Registry::start();
    let blob = std::fs::read(reference("hello-world-amd64-overlaybd-layer.tar")).unwrap();
    let digest = reg.push_blob("library/hello", &blob);
    let c = RegistryClient::new(ClientOptions::default()).unwrap();
    let url = reg.blob_url("library/hello");
    assert_eq!(c.blob_size(&url, &digest).unwrap(), blob.len() as u64);
    for (off, len) in [(0usize, 512usize), (1536, 4096), (blob.len() - 100, 100), (12345, 262_144)] {
        let got = c.read_range(&url, &digest, off as u64, len).unwrap();
        assert!(got == blob[off..off + len], "bytes {off}+{len} differ");
    }
}

#[test]
fn a_plain_http_registry_on_loopback_is_reached_from_an_https_url() {
    // what the snapshotter builds from `127.0.0.1:PORT/repo:tag` is an https:// URL
    let reg = Registry::start();
    let blob = std::fs::read(reference("hello-world-amd64-overlaybd-layer.tar")).unwrap();
    let digest = reg.push_blob("library/hello", &blob);
    let https = reg.blob_url("library/hello").replacen("http://", "https://", 1);
    let c = RegistryClient::new(ClientOptions::default()).unwrap();
    assert_eq!(c.blob_size(&https, &digest).unwrap(), blob.len() as u64);
    assert!(c.read_range(&https, &digest, 1000, 4096).unwrap() == blob[1000..5096]);
    // (only loopback hosts fall back: see the unit test of `is_loopback`)
}

/// The number of tries a failed read says it made (its `(N tries)`).
fn tries(msg: &str) -> u32 {
    let end = msg.find(" tries)").unwrap_or_else(|| panic!("no tries in {msg:?}"));
    let start = msg[..end].rfind('(').unwrap() + 1;
    msg[start..end].parse().unwrap_or_else(|_| panic!("no tries in {msg:?}"))
}

/// Waits (polling) until `cond` holds, at most `secs` seconds.
fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the read-ahead `blob` started is over: every chunk it fetched is in the cache,
/// and every request it sent has been answered.
fn read_ahead_over(blob: &RemoteBlob) {
    wait_until("the read-ahead to end", 120, || blob.read_ahead_in_flight() == 0);
}

/// The blob GETs the proxy saw, as (offset, length) from their `Range` headers.
fn fetched(proxy: &Proxy) -> Vec<(u64, u64)> {
    proxy
        .seen()
        .iter()
        .filter(|(m, _, _)| m == "GET")
        .map(|(_, _, r)| {
            let (a, b) = r.strip_prefix("bytes=").and_then(|r| r.split_once('-')).expect("a range request");
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            (a, b - a + 1)
        })
        .collect()
}

/// Bytes of the GETs in `reqs`.
fn bytes(reqs: &[(u64, u64)]) -> u64 {
    reqs.iter().map(|r| r.1).sum()
}

/// A proxy in front of `reg`, and the blob URL of `repo` through it.
fn proxied(reg: &Registry, repo: &str) -> (Proxy, String) {
    let proxy = Proxy::start(reg.base.trim_start_matches("http://"));
    let url = format!("{}/v2/{repo}/blobs", proxy.base);
    (proxy, url)
}

#[test]
fn a_missing_blob_fails_at_once_with_the_url() {
    let reg = Registry::start();
    let c = RegistryClient::new(ClientOptions::default()).unwrap();
    let e = c.read_range(&reg.blob_url("library/none"), &format!("sha256:{}", "0".repeat(64)), 0, 10).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("library/none") && msg.contains("404"), "{msg}");
    assert_eq!(tries(&msg), 1, "a 404 is retried: {msg}");
}

/// A loopback port that refuses connections, as long as the value lives: a socket bound to it
/// and not listening (so nothing else can take the port meanwhile).
struct RefusingPort {
    _socket: std::os::fd::OwnedFd,
    port: u16,
}

fn refusing_port() -> RefusingPort {
    use nix::libc;
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor made here (owned at once) with a zeroed
    // sockaddr_in of the right size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::bind(fd, &addr as *const libc::sockaddr_in as *const libc::sockaddr, len);
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let mut len = len;
        let r = libc::getsockname(fd, &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr, &mut len);
        assert_eq!(r, 0, "getsockname: {}", std::io::Error::last_os_error());
        RefusingPort { _socket: socket, port: u16::from_be(addr.sin_port) }
    }
}

#[test]
fn an_unreachable_registry_gives_up_in_bounded_time() {
    let refusing = refusing_port();
    let retry = backstore::remote::retry::RetryPolicy { deadline: Duration::from_secs(3), ..Default::default() };
    let c = RegistryClient::new(ClientOptions {
        retry: retry.clone(),
        credentials: Some(Arc::new(CredentialFile::new("/nonexistent"))),
        ..Default::default()
    })
    .unwrap();
    let e = c.read_range(&format!("http://127.0.0.1:{}/v2/x/blobs", refusing.port), "sha256:00", 0, 10).unwrap_err();
    // the deadline ends it: the pauses before the last of the allowed tries add up to more than
    // it (0.1 + 0.2 + 0.4 + 0.8 + 1.6 s at least), so fewer tries are made
    let n = tries(&e.to_string());
    let pauses: Duration = (0..retry.attempts - 1).map(|i| retry.pause(i, 0)).sum();
    assert!(pauses >= retry.deadline, "the test's premise: {pauses:?}");
    assert!((1..retry.attempts).contains(&n), "{n} tries: {e}");
}

#[test]
fn basic_auth_behind_tls_with_a_credential_file() {
    let reg = Registry::start_tls_htpasswd("alice", "s3cret");
    let blob = std::fs::read(reference("hello-world-amd64-overlaybd-layer.tar")).unwrap();
    let digest = reg.push_blob("team/hello", &blob);
    let url = reg.blob_url("team/hello");
    let dir = tempfile::tempdir().unwrap();
    let cred = dir.path().join("cred.json");
    let host = reg.base.trim_start_matches("https://").to_string();
    let write_cred = |pw: &str| {
        std::fs::write(&cred, format!(r#"{{"auths":{{"{host}":{{"username":"alice","password":"{pw}"}}}}}}"#)).unwrap()
    };
    let client = |with_cred: bool| {
        RegistryClient::new(ClientOptions {
            extra_roots_pem: vec![reg.ca_pem.clone().unwrap()],
            credentials: with_cred.then(|| Arc::new(CredentialFile::new(&cred)) as Arc<dyn Credentials>),
            ..Default::default()
        })
        .unwrap()
    };
    // a wrong password: a clear error, at the first try, naming the registry and the credential file
    write_cred("wrong");
    let c = client(true);
    let e = c.read_range(&url, &digest, 0, 100).unwrap_err().to_string();
    assert_eq!(tries(&e), 1, "an authentication failure is retried: {e}");
    assert!(e.contains("authentication failed") && e.contains(&host) && e.contains("cred.json"), "{e}");
    // the password fixed in the file: the same client picks it up
    write_cred("s3cret");
    assert!(c.read_range(&url, &digest, 1536, 4096).unwrap() == blob[1536..1536 + 4096]);
    // no credentials at all
    let e = client(false).read_range(&url, &digest, 0, 100).unwrap_err().to_string();
    assert!(e.contains("no credential"), "{e}");
    // without our CA the TLS handshake fails
    let e = RegistryClient::new(ClientOptions { retry: quick_retry(), ..Default::default() })
        .unwrap()
        .read_range(&url, &digest, 0, 100)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tries"), "{e}");
}

fn quick_retry() -> backstore::remote::retry::RetryPolicy {
    backstore::remote::retry::RetryPolicy { attempts: 2, deadline: Duration::from_secs(2), ..Default::default() }
}

/// Bytes each GET of the registry's log wrote (from its `http.response.written` fields). The
/// registry logs a request when its handler ends, which may be after the client got its answer.
fn written_per_get(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("response completed") && l.contains("http.request.method=GET") && l.contains("/blobs/"))
        .filter_map(|l| l.split("http.response.written=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Attaches the reference image, pushed to `reg`, from `blob_url` (the registry's, or a proxy's
/// in front of it) over fuse-loop (global config and extra environment given), checks `/hello`,
/// stops; returns the layer's digest.
fn attach_reference_from(
    reg: &Registry,
    blob_url: &str,
    p: &std::path::Path,
    cred: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> String {
    let (digest, size) = reg.push_reference_image("library/hello-world", "latest");
    let global = p.join("overlaybd.json");
    let cred_json =
        cred.map_or(String::new(), |c| format!(r#","credentialConfig":{{"mode":"file","path":"{}"}}"#, c.display()));
    std::fs::write(
        &global,
        format!(
            r#"{{"cacheConfig":{{"cacheType":"file","cacheDir":"{}","cacheSizeGB":1}}{cred_json}}}"#,
            p.join("cache").display()
        ),
    )
    .unwrap();
    let cfg = p.join("config.v1.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"repoBlobUrl":"{blob_url}","lowers":[{{"digest":"{digest}","size":{size},"dir":"{}"}}],"resultFile":"{}"}}"#,
            p.join("layer-dir").display(),
            p.join("result").display()
        ),
    )
    .unwrap();
    let a = common::kernel::Attach::start_env(
        &cfg,
        &p.join("run"),
        &["--service_config_path", global.to_str().unwrap()],
        env,
    );
    assert_eq!(std::fs::read_to_string(p.join("result")).unwrap(), "success");
    {
        let m = common::kernel::Mount::new(&a.device, &p.join("mnt"), true);
        let hello = std::fs::read(m.0.join("hello")).unwrap();
        assert_eq!(sha256(&hello), "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014");
    }
    a.stop();
    digest
}

/// True if the `len` bytes at `offset` of blob `digest` are in the chunk cache at `dir` (chunks
/// of `chunk` bytes): as a metadata range kept as it is, or as whole chunks.
fn cached(dir: &std::path::Path, digest: &str, chunk: u64, offset: u64, len: u64) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    let blob = dir.join(&hex[..2]).join(hex);
    blob.join(format!("meta-{offset}-{len}")).exists()
        || (offset.is_multiple_of(chunk)
            && (offset / chunk..=(offset + len - 1) / chunk).all(|i| blob.join(i.to_string()).exists()))
}

#[test]
fn the_reference_image_attached_from_the_registry_reads_hello_by_ranges() {
    common::kernel::require_root();
    let reg = Registry::start();
    let (proxy, url) = proxied(&reg, "library/hello-world");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let digest = attach_reference_from(&reg, &url, p, None, &[]);
    // (the attach has exited; a read-ahead its exit cut short may have sent a request still unread)
    proxy.settle();
    let first = fetched(&proxy);
    let layer_len = std::fs::metadata(reference("hello-world-amd64-overlaybd-layer.tar")).unwrap().len();
    assert!(!first.is_empty(), "no blob reads");
    assert!(first.iter().all(|&(_, n)| n < layer_len), "the whole blob in one request: {first:?}");
    // (each chunk is fetched once, each metadata range once)
    assert!(bytes(&first) < layer_len * 2, "{first:?}");
    // the cache has the chunks: a second attach reads nothing more from the registry, but what
    // the first fetched and did not store (a read-ahead cut short by its exit)
    let unstored: Vec<(u64, u64)> =
        first.iter().copied().filter(|&(at, n)| !cached(&p.join("cache"), &digest, 256 << 10, at, n)).collect();
    let cfg = p.join("config.v1.json");
    let global = p.join("overlaybd.json");
    let a =
        common::kernel::Attach::start_with(&cfg, &p.join("run"), &["--service_config_path", global.to_str().unwrap()]);
    {
        let m = common::kernel::Mount::new(&a.device, &p.join("mnt"), true);
        assert_eq!(
            sha256(&std::fs::read(m.0.join("hello")).unwrap()),
            "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014"
        );
    }
    a.stop();
    proxy.settle();
    let second = fetched(&proxy)[first.len()..].to_vec();
    assert!(
        second.iter().all(|r| unstored.contains(r)),
        "the second attach went to the registry: {second:?} (not stored by the first: {unstored:?})"
    );
}

#[test]
fn the_reference_image_attached_from_a_tls_registry_with_htpasswd() {
    common::kernel::require_root();
    let reg = Registry::start_tls_htpasswd("carol", "pa55");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let host = reg.base.trim_start_matches("https://").to_string();
    let cred = p.join("cred.json");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "carol:pa55");
    std::fs::write(&cred, format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
    // the test's CA, trusted the way an operator would: SSL_CERT_FILE (or the system store)
    let ca = p.join("ca.pem");
    std::fs::write(&ca, reg.ca_pem.clone().unwrap()).unwrap();
    let url = reg.blob_url("library/hello-world");
    attach_reference_from(&reg, &url, p, Some(&cred), &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    // (the registry may log a request after its answer)
    wait_until("the registry to log a blob read", 60, || !written_per_get(&reg.log_text()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Faults, through the fault-injecting proxy

use backstore::io::{LocalFile, ReadAt};
use backstore::remote::blob::RemoteBlob;
use backstore::remote::cache::BlobCache;
use backstore::remote::retry::RetryPolicy;
use common::proxy::{Fault, Proxy};

struct Faulty {
    reg: Registry,
    proxy: Proxy,
    blob: Vec<u8>,
    digest: String,
    url: String,
}

fn faulty() -> Faulty {
    let reg = Registry::start();
    let blob = std::fs::read(reference("hello-world-amd64-overlaybd-layer.tar")).unwrap();
    let digest = reg.push_blob("library/hello", &blob);
    let proxy = Proxy::start(reg.base.trim_start_matches("http://"));
    let url = format!("{}/v2/library/hello/blobs", proxy.base);
    Faulty { reg, proxy, blob, digest, url }
}

/// How long one request may take with [`client`]: the `Slow` faults of the tests are longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of 5 tries at most, within `deadline_s`, of [`REQUEST_TIMEOUT`] each.
fn client(deadline_s: u64) -> Arc<RegistryClient> {
    client_with(deadline_s, REQUEST_TIMEOUT)
}

fn client_with(deadline_s: u64, request_timeout: Duration) -> Arc<RegistryClient> {
    Arc::new(
        RegistryClient::new(ClientOptions {
            retry: RetryPolicy {
                attempts: 5,
                first_pause: Duration::from_millis(20),
                max_pause: Duration::from_millis(200),
                deadline: Duration::from_secs(deadline_s),
            },
            request_timeout,
            ..Default::default()
        })
        .unwrap(),
    )
}

#[test]
fn transient_faults_are_retried_to_the_right_bytes() {
    let f = faulty();
    let c = client(30);
    for fault in
        [Fault::Status(500), Fault::Status(503), Fault::Reset, Fault::Slow(REQUEST_TIMEOUT * 2), Fault::Truncate(100)]
    {
        f.proxy.push(&[fault.clone(), fault.clone()]);
        let got = c.read_range(&f.url, &f.digest, 1536, 8192).unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert!(got == f.blob[1536..1536 + 8192], "{fault:?}: wrong bytes");
        // each fault failed one try (the try that gave the bytes met none)
        assert_eq!(f.proxy.pending(), 0, "{fault:?}: not every fault was met");
    }
}

#[test]
fn persistent_faults_end_in_bounded_time_with_an_error() {
    let f = faulty();
    let c = client(3);
    for fault in [Fault::Status(503), Fault::Reset, Fault::Truncate(10), Fault::Slow(REQUEST_TIMEOUT * 3)] {
        f.proxy.always(Some(fault.clone()));
        f.proxy.settle();
        let before = f.proxy.seen().len();
        let e = c.read_range(&f.url, &f.digest, 0, 4096).expect_err(&format!("{fault:?} gave data"));
        // bounded: at most the policy's 5 tries (each of at most one request timeout), one
        // request each
        f.proxy.settle();
        let sent = f.proxy.seen().len() - before;
        let n = tries(&e.to_string());
        assert!((1..=5).contains(&n) && sent == n as usize, "{fault:?}: {n} tries, {sent} requests: {e}");
    }
    f.proxy.always(None);
    assert!(c.read_range(&f.url, &f.digest, 0, 4096).unwrap() == f.blob[..4096]);
}

#[test]
fn wrong_bytes_are_never_served_and_the_cache_heals() {
    let f = faulty();
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path(), 64 << 20, 256 << 10).unwrap();
    let remote: Arc<dyn ReadAt> =
        Arc::new(RemoteBlob::new(client(5), &f.url, &f.digest, f.blob.len() as u64, Some(cache.clone())));
    let ours = backstore::detect::unwrap(remote, true).unwrap();
    let theirs = backstore::detect::unwrap(
        Arc::new(LocalFile::open(reference("hello-world-amd64-overlaybd-layer.tar")).unwrap()),
        true,
    )
    .unwrap();
    let z = ours.zfile.clone().unwrap();
    let tar_base = ours.tar.as_ref().map_or(0, |t| t.offset);
    // the block holding the middle of chunk 1 of the blob, where the proxy flips a byte
    let target = (256u64 << 10) + (128 << 10) - tar_base;
    let block = (0..z.blocks()).find(|&i| z.block_offset(i) <= target && target < z.block_offset(i + 1)).unwrap();
    let at = block * z.block_size();
    let mut want = vec![0u8; 4096];
    theirs.inner.read_at(&mut want, at).unwrap();
    // (opening the layer read metadata ranges only: no chunk, and no read-ahead)
    assert!(!cache.contains(&f.digest, 1), "opening the layer fetched chunk 1");
    // every answer corrupted: an error, never the wrong bytes
    f.proxy.always(Some(Fault::Corrupt));
    let mut got = vec![0u8; 4096];
    let e = ours.inner.read_at(&mut got, at).unwrap_err();
    assert!(e.to_string().contains("corrupt") || e.to_string().contains("checksum"), "{e}");
    let hex = f.digest.trim_start_matches("sha256:");
    assert!(!dir.path().join(&hex[..2]).join(hex).join("1").exists(), "a corrupt chunk stayed in the cache");
    // one corrupted answer: the bad chunk is dropped, fetched again, and right
    f.proxy.always(None);
    f.proxy.push(&[Fault::Corrupt]);
    ours.inner.read_at(&mut got, at).unwrap();
    assert!(got == want);
    // and what stays cached is right: reads without the registry give the same bytes
    f.proxy.always(Some(Fault::Status(500)));
    ours.inner.read_at(&mut got, at).unwrap();
    assert!(got == want);
}

#[test]
fn a_cache_file_damaged_on_disk_is_dropped_and_fetched_again() {
    let f = faulty();
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path(), 64 << 20, 256 << 10).unwrap();
    let blob = RemoteBlob::new(client(5), &f.url, &f.digest, f.blob.len() as u64, Some(cache.clone()));
    let hex = f.digest.trim_start_matches("sha256:");
    let chunk0 = dir.path().join(&hex[..2]).join(hex).join("0");
    let mut got = vec![0u8; 8192];
    blob.read_at(&mut got, 1000).unwrap();
    assert!(got == f.blob[1000..9192]);
    assert!(chunk0.exists(), "the first read did not fill the cache");
    // (counted as they arrive: a request the read got its answer to is counted)
    let served = || f.proxy.seen().iter().filter(|(m, p, _)| m == "GET" && p.contains(hex)).count();
    // a flipped byte in the middle of the cached chunk
    let mut bytes = std::fs::read(&chunk0).unwrap();
    bytes[4000] ^= 0x40;
    std::fs::write(&chunk0, &bytes).unwrap();
    let before = served();
    blob.read_at(&mut got, 1000).unwrap();
    assert!(got == f.blob[1000..9192], "a damaged cache file was served");
    assert!(served() > before, "the damaged chunk was not fetched again");
    // healed: the file on disk is intact again and the next read needs no registry
    f.proxy.always(Some(Fault::Status(500)));
    blob.read_at(&mut got, 1000).unwrap();
    assert!(got == f.blob[1000..9192]);
    f.proxy.always(None);
    // a file cut short (a crash mid-write) heals the same way
    let len = std::fs::metadata(&chunk0).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&chunk0).unwrap().set_len(len / 3).unwrap();
    blob.read_at(&mut got, 1000).unwrap();
    assert!(got == f.blob[1000..9192], "a truncated cache file was served");
    assert_eq!(std::fs::metadata(&chunk0).unwrap().len(), len, "the truncated chunk was not rewritten");
    // and a reopened cache (a restart) checks what it finds the same way
    let mut bytes = std::fs::read(&chunk0).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&chunk0, &bytes).unwrap();
    let cache = BlobCache::open(dir.path(), 64 << 20, 256 << 10).unwrap();
    let blob = RemoteBlob::new(client(5), &f.url, &f.digest, f.blob.len() as u64, Some(cache));
    blob.read_at(&mut got, 0).unwrap();
    assert!(got == f.blob[..8192], "a damaged chunk found after a restart was served");
}

#[test]
fn bearer_tokens_are_fetched_and_renewed_when_they_expire() {
    let f = faulty();
    // tokens announced to live 1 s (the gate still takes them a while after: a loaded machine
    // may be slow to use one)
    f.proxy.require_bearer(1);
    let c = client(5);
    assert!(c.read_range(&f.url, &f.digest, 0, 512).unwrap() == f.blob[..512]);
    let first = f.proxy.token_requests();
    assert!(first >= 1);
    // (a sleep ends no earlier than asked: the token has outlived its announced lifetime)
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.read_range(&f.url, &f.digest, 512, 512).unwrap() == f.blob[512..1024]);
    assert!(f.proxy.token_requests() > first, "the expired token was not renewed");
}

// ---------------------------------------------------------------------------------------------
// Background download

use backstore::remote::download::{self, DownloadOptions};

fn wait_for(p: &std::path::Path, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn len_of(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

#[test]
fn the_background_download_keeps_its_rate_verifies_and_switches_reads_to_the_file() {
    let f = faulty();
    let dir = tempfile::tempdir().unwrap();
    let blob = Arc::new(RemoteBlob::new(client(10), &f.url, &f.digest, f.blob.len() as u64, None));
    let opts = DownloadOptions {
        delay: Duration::from_millis(0),
        delay_extra: Duration::ZERO,
        max_bytes_per_sec: 1_000_000,
        tries: 2,
        block_size: 64 << 10,
    };
    let start = Instant::now();
    download::spawn(&blob, dir.path().to_path_buf(), opts);
    let done = download::committed_path(dir.path());
    assert!(wait_for(&done, 120), "the download did not finish");
    // a lower bound, which no load breaks: the download sleeps until each block is due at the
    // rate, the last one included, before it renames the file into place
    let took = start.elapsed();
    let due = Duration::from_secs_f64(f.blob.len() as f64 / 1_000_000.0);
    let rate = f.blob.len() as f64 / took.as_secs_f64() / 1e6;
    println!("downloaded {} bytes in {took:.2?}: {rate:.2} MB/s against a limit of 1 MB/s", f.blob.len());
    assert!(took >= due, "the rate limit did not hold: {rate:.2} MB/s");
    assert_eq!(std::fs::read(&done).unwrap(), f.blob);
    // (the file is renamed into place, then opened and handed to the blob)
    wait_until("reads to switch to the downloaded file", 60, || blob.is_local());
    // reads no longer need the registry
    f.proxy.always(Some(Fault::Status(500)));
    let mut buf = vec![0u8; 4096];
    blob.read_at(&mut buf, 1536).unwrap();
    assert!(buf == f.blob[1536..1536 + 4096]);
}

#[test]
fn a_stopped_download_resumes_where_it_stopped() {
    const BLOCK: u64 = 64 << 10;
    let f = faulty();
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("overlaybd.commit.download");
    let opts = DownloadOptions {
        delay: Duration::ZERO,
        delay_extra: Duration::ZERO,
        max_bytes_per_sec: 0,
        tries: 1,
        block_size: BLOCK,
    };
    // (requests wait at the proxy as long as the test holds them, not a request timeout)
    let client = || client_with(60, Duration::from_secs(300));
    // the fourth block's request waits at the proxy
    let stop_at = 3 * BLOCK;
    f.proxy.hold_from(Some(stop_at));
    let blob = Arc::new(RemoteBlob::new(client(), &f.url, &f.digest, f.blob.len() as u64, None));
    download::spawn(&blob, dir.path().to_path_buf(), opts.clone());
    wait_until("the download to ask for the fourth block", 120, || f.proxy.held() == 1);
    assert_eq!(len_of(&part), stop_at, "the blocks before it are not all written");
    // the device goes away while the download waits for that block: once it has it (and has
    // written it), it finds the blob gone and stops
    drop(blob);
    f.proxy.hold_from(None);
    let have = stop_at + BLOCK;
    wait_until("the block the download was fetching to be written", 120, || len_of(&part) >= have);
    assert_eq!(len_of(&part), have);
    assert!(!download::committed_path(dir.path()).exists());
    let before = f.proxy.seen().len();
    let blob = Arc::new(RemoteBlob::new(client(), &f.url, &f.digest, f.blob.len() as u64, None));
    download::spawn(&blob, dir.path().to_path_buf(), opts);
    assert!(wait_for(&download::committed_path(dir.path()), 120));
    assert_eq!(std::fs::read(download::committed_path(dir.path())).unwrap(), f.blob);
    let resumed = &f.proxy.seen()[before..];
    let first = resumed.iter().map(|(_, _, r)| r.clone()).next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("bytes={}-", have)) || first.starts_with(&format!("bytes={}", have)),
        "resumed with {first:?}, have {have}"
    );
}

#[test]
fn a_download_with_wrong_bytes_is_thrown_away() {
    let f = faulty();
    f.proxy.always(Some(Fault::Corrupt));
    let dir = tempfile::tempdir().unwrap();
    let blob = Arc::new(RemoteBlob::new(client(10), &f.url, &f.digest, f.blob.len() as u64, None));
    let opts = DownloadOptions {
        delay: Duration::ZERO,
        delay_extra: Duration::ZERO,
        max_bytes_per_sec: 0,
        tries: 1,
        block_size: 256 << 10,
    };
    download::spawn(&blob, dir.path().to_path_buf(), opts);
    // the partial file is made before the first request, and removed when the blob's sha256
    // is found wrong (after its last block): its going, once the last block was asked for,
    // marks the end of the attempt
    let part = dir.path().join("overlaybd.commit.download");
    let requests = (f.blob.len() as u64).div_ceil(256 << 10) as usize;
    wait_until("the download to end", 120, || f.proxy.seen().len() >= requests && !part.exists());
    assert!(!download::committed_path(dir.path()).exists(), "a corrupt download was kept");
    assert!(!blob.is_local());
}

#[test]
fn a_p2p_prefix_and_mirrors_are_tried_before_the_registry() {
    let f = faulty();
    let origin = f.url.clone();
    // the P2P proxy answers: the origin is not asked
    let c =
        RegistryClient::new(ClientOptions { p2p_prefix: Some(format!("{}/p2p", f.proxy.base)), ..Default::default() })
            .unwrap();
    let before = f.proxy.seen().len();
    assert!(c.read_range(&f.reg.blob_url("library/hello"), &f.digest, 0, 4096).unwrap() == f.blob[..4096]);
    assert_eq!(f.proxy.seen().len(), before + 1, "the P2P prefix was not used");
    // a mirror without the blob: the registry answers
    let empty = Registry::start();
    let c = RegistryClient::new(ClientOptions { mirrors: vec![empty.base.clone()], ..Default::default() }).unwrap();
    assert!(c.read_range(&origin, &f.digest, 100, 1000).unwrap() == f.blob[100..1100]);
}

/// A credential server answering every request with `body`; returns its URL and the request
/// lines it saw.
fn credential_server(body: String) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/auth", l.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            s2.lock().unwrap().push(first);
            let mut c = c;
            let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (url, seen)
}

#[test]
fn a_credential_server_supplies_the_password() {
    let reg = Registry::start_tls_htpasswd("bob", "pw1");
    let blob = std::fs::read(reference("hello-world-amd64-overlaybd-layer.tar")).unwrap();
    let digest = reg.push_blob("team/x", &blob);
    let host = reg.base.trim_start_matches("https://").to_string();
    let (url, seen) = credential_server(format!(
        r#"{{"success":true,"traceId":"t1","data":{{"auths":{{"{host}":{{"username":"bob","password":"pw1"}}}}}}}}"#
    ));
    let server = CredentialServer::new(&url, Duration::from_secs(2), None, None).unwrap();
    let c = RegistryClient::new(ClientOptions {
        extra_roots_pem: vec![reg.ca_pem.clone().unwrap()],
        credentials: Some(Arc::new(server)),
        ..Default::default()
    })
    .unwrap();
    assert!(c.read_range(&reg.blob_url("team/x"), &digest, 0, 1000).unwrap() == blob[..1000]);
    let lines = seen.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.contains("remote_url=https%3A%2F%2F127.0.0.1")), "{lines:?}");
    // a server that says no: a clear error naming it
    let (url, _) = credential_server(r#"{"success":false,"traceId":"t2"}"#.to_string());
    let c = RegistryClient::new(ClientOptions {
        extra_roots_pem: vec![reg.ca_pem.clone().unwrap()],
        credentials: Some(Arc::new(CredentialServer::new(&url, Duration::from_secs(2), None, None).unwrap())),
        ..Default::default()
    })
    .unwrap();
    let e = c.read_range(&reg.blob_url("team/x"), &digest, 0, 1000).unwrap_err().to_string();
    assert!(e.contains("success=false") && e.contains("t2"), "{e}");
}

#[test]
fn only_ranges_are_read_before_the_background_download_is_allowed() {
    common::kernel::require_root();
    let reg = Registry::start();
    let layer = std::fs::read(reference("hello-world-amd64-overlaybd-layer.tar")).unwrap();
    let len = layer.len() as u64;
    let digest = reg.push_blob("library/hello-world", &layer);
    let (proxy, url) = proxied(&reg, "library/hello-world");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let global = p.join("overlaybd.json");
    // the download in one request of the whole blob (a block larger than it), which no read of
    // ranges asks for (read-ahead asks for MAX_REQUEST at most, a read for the chunks it needs)
    std::fs::write(
        &global,
        format!(
            r#"{{"cacheConfig":{{"cacheType":"file","cacheDir":"{}","cacheSizeGB":1,"refillSize":65536}},
               "download":{{"enable":true,"delay":3,"delayExtra":0,"maxMBps":100,"blockSize":{}}}}}"#,
            p.join("cache").display(),
            2 * len
        ),
    )
    .unwrap();
    let layer_dir = p.join("layer-dir");
    let cfg = p.join("config.v1.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"repoBlobUrl":"{url}","lowers":[{{"digest":"{digest}","size":{len},"dir":"{}"}}]}}"#,
            layer_dir.display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let a =
        common::kernel::Attach::start_with(&cfg, &p.join("run"), &["--service_config_path", global.to_str().unwrap()]);
    {
        let m = common::kernel::Mount::new(&a.device, &p.join("mnt"), true);
        assert_eq!(
            sha256(&std::fs::read(m.0.join("hello")).unwrap()),
            "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014"
        );
        // then the download comes, and the file is the blob
        assert!(wait_for(&layer_dir.join("overlaybd.commit"), 120), "no download");
        assert_eq!(sha256_file(&layer_dir.join("overlaybd.commit")), digest.trim_start_matches("sha256:"));
    }
    a.stop();
    // the requests, stamped as they arrived: the download's came no earlier than its delay
    // after the device was set up (after `start`), whatever else was slow; before it, and
    // around it, the device read ranges
    let whole = format!("bytes=0-{}", len - 1);
    let (download, ranges): (Vec<_>, Vec<_>) = proxy.seen_at().into_iter().partition(|(_, (_, _, r))| *r == whole);
    assert!(!download.is_empty(), "the download did not come through the proxy");
    for (at, _) in &download {
        assert!(*at >= start + Duration::from_secs(3), "the download did not wait for its delay");
    }
    let ranges: Vec<u64> = ranges
        .iter()
        .map(|(_, (_, _, r))| {
            let (a, b) = r.strip_prefix("bytes=").and_then(|r| r.split_once('-')).expect("a range request");
            b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1
        })
        .collect();
    assert!(!ranges.is_empty() && ranges.iter().sum::<u64>() < len, "the whole blob was read by ranges: {ranges:?}");
}

#[test]
fn the_cache_limit_holds_under_a_larger_workload() {
    let reg = Registry::start();
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let digest = reg.push_blob("big/blob", &data);
    let dir = tempfile::tempdir().unwrap();
    let limit = 1u64 << 20;
    let cache = BlobCache::open(dir.path(), limit, 64 << 10).unwrap();
    let blob = RemoteBlob::new(client(10), &reg.blob_url("big/blob"), &digest, data.len() as u64, Some(cache.clone()));
    let mut buf = vec![0u8; 100_000];
    for round in 0..2 {
        let mut off = 0usize;
        while off < data.len() {
            let n = buf.len().min(data.len() - off);
            blob.read_at(&mut buf[..n], off as u64).unwrap();
            assert!(buf[..n] == data[off..off + n], "round {round}: bytes at {off} differ");
            assert!(cache.used() <= limit, "the cache holds {} bytes over its {limit}", cache.used());
            off += n;
        }
    }
    // (a read-ahead still storing a chunk has its file in place before it evicts others)
    read_ahead_over(&blob);
    let on_disk: u64 = walk(dir.path());
    assert!(on_disk <= limit, "{on_disk} bytes on disk");
}

fn walk(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn a_sequential_read_streams_in_few_large_requests_and_random_reads_fetch_only_their_chunks() {
    use backstore::remote::blob::{MAX_REQUEST, MAX_WINDOW};
    const CHUNK: u64 = 64 << 10;
    const READ: u64 = 128 << 10;
    let reg = Registry::start();
    let blob = random(24 << 20, 7);
    let len = blob.len() as u64;
    let digest = reg.push_blob("test/seq", &blob);
    let (proxy, url) = proxied(&reg, "test/seq");
    // (requests wait at the proxy as long as the test holds them, not a request timeout)
    let client = client_with(60, Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap();

    // a file read front to back in 128 KiB reads, as the kernel reads it
    let cache = BlobCache::open(&dir.path().join("c1"), 1 << 30, CHUNK).unwrap();
    let b = RemoteBlob::new(client.clone(), &url, &digest, len, Some(cache.clone()));
    let mut buf = vec![0u8; READ as usize];
    let mut read = |off: u64| {
        assert_eq!(b.read_at(&mut buf, off).unwrap(), buf.len());
        assert!(buf[..] == blob[off as usize..(off + READ) as usize], "bytes at {off} differ");
    };
    let is_cached = |off: u64| (off / CHUNK..(off + READ) / CHUNK).all(|i| cache.contains(&digest, i));
    // the first MAX_WINDOW bytes, each read's read-ahead over before the next read (so each
    // fetches what the window asks for and no less): the window grows to its full size
    let mut off = 0;
    while off < MAX_WINDOW {
        read(off);
        read_ahead_over(&b);
        off += READ;
    }
    // the registry stalls (requests wait at the proxy): the reader goes on through what the
    // window fetched ahead, a whole window of it, while the read-ahead it starts waits
    proxy.hold_from(Some(0));
    let stalled_at = off;
    while off < len && is_cached(off) {
        read(off);
        off += READ;
    }
    assert!(off - stalled_at >= MAX_WINDOW, "the reader found {} bytes fetched ahead", off - stalled_at);
    // the registry answers again: the waiting read-ahead ends, and the next read, far ahead of
    // what read-ahead asked for, makes it ask for as much as a request may
    proxy.hold_from(None);
    read_ahead_over(&b);
    let asked = fetched(&proxy).len();
    read(off);
    off += READ;
    read_ahead_over(&b);
    let after = fetched(&proxy)[asked..].to_vec();
    assert!(after.iter().any(|&(_, n)| n == MAX_REQUEST), "a reader ahead of its read-ahead: {after:?}");
    // the rest
    while off < len {
        read(off);
        off += READ;
    }
    read_ahead_over(&b);
    let gets = fetched(&proxy);
    let chunks = len / CHUNK;
    eprintln!("sequential: {} requests for {chunks} chunks: {gets:?}", gets.len());
    assert_eq!(bytes(&gets), len, "every byte fetched exactly once");
    assert!(gets.iter().all(|&(_, n)| n <= MAX_REQUEST), "a request over {MAX_REQUEST}: {gets:?}");

    // small reads all over the blob: no read-ahead, each fetches its own chunk (or two)
    let cache = BlobCache::open(&dir.path().join("c2"), 1 << 30, CHUNK).unwrap();
    let b = RemoteBlob::new(client, &url, &digest, len, Some(cache));
    let before = fetched(&proxy).len();
    let mut small = vec![0u8; 4096];
    for k in 0..16u64 {
        let off = (k * 7_919_993) % (len - 4096);
        b.read_at(&mut small, off).unwrap();
        assert!(small[..] == blob[off as usize..off as usize + 4096], "bytes at {off} differ");
    }
    read_ahead_over(&b);
    let gets = fetched(&proxy)[before..].to_vec();
    assert!(bytes(&gets) <= 16 * 2 * CHUNK, "random reads fetched {} bytes: {gets:?}", bytes(&gets));
}

/// A compressed, tar-wrapped layer (the registry's form) with `pieces` scattered writes of
/// random data, and the layer's bytes as a model: (blob, model).
fn scattered_layer(dir: &std::path::Path, pieces: u64) -> (Vec<u8>, Vec<u8>) {
    use backstore::lsmt::writable::{CreateOptions, Recovery};
    use backstore::lsmt::WritableLayer;
    use backstore::uuid::LayerUuid;
    const VSIZE: u64 = 256 << 20;
    let (d, i) = (dir.join("w.data"), dir.join("w.index"));
    let opts =
        CreateOptions { virtual_size: VSIZE, uuid: LayerUuid::random(), parent_uuid: LayerUuid::NIL, sparse: false };
    WritableLayer::create(&d, &i, &opts).unwrap();
    let l = WritableLayer::open(&d, &i, true, Recovery::Strict).unwrap();
    let mut model = vec![0u8; VSIZE as usize];
    for k in 0..pieces {
        let off = (k * 7_340_033 % (VSIZE - (64 << 10))) / 4096 * 4096;
        let data = random(64 << 10, k);
        l.write_at(&data, off).unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    l.flush().unwrap();
    drop(l);
    let out = dir.join("layer.tar");
    run(std::process::Command::new(bin("overlaybd-commit")).args(["-z", "-t"]).arg(&d).arg(&i).arg(&out));
    (std::fs::read(&out).unwrap(), model)
}

#[test]
fn opening_a_remote_layer_fetches_its_metadata_not_whole_chunks_and_keeps_it_in_the_cache() {
    use backstore::detect::open_layer;
    use backstore::remote::blob::{RemoteBlob, META_GRANULE};
    use backstore::remote::cache::BlobCache;
    const CHUNK: u64 = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let (blob, model) = scattered_layer(dir.path(), 300);
    assert!(blob.len() as u64 > 40 * CHUNK, "{}", blob.len());
    let reg = Registry::start();
    let digest = reg.push_blob("test/meta", &blob);
    let (proxy, url) = proxied(&reg, "test/meta");
    let client = Arc::new(RegistryClient::new(ClientOptions::default()).unwrap());
    let cache = BlobCache::open(&dir.path().join("cache"), 1 << 30, CHUNK).unwrap();
    let open = |cache: &Arc<BlobCache>| {
        let b = Arc::new(RemoteBlob::new(client.clone(), &url, &digest, blob.len() as u64, Some(cache.clone())));
        (open_layer(b.clone(), true).unwrap(), b)
    };

    let (layer, remote) = open(&cache);
    // (the open's reads are over when it returns, and each request counted before its answer)
    let gets = fetched(&proxy);
    // the head (tar, ZFile and LSMT headers), and the tail (the jump table with the LSMT
    // index and trailer just before it): a few granules, where chunks would take 3 or more
    eprintln!("open: {} requests, {gets:?}", gets.len());
    assert!((2..=4).contains(&gets.len()), "{gets:?}");
    assert!(bytes(&gets) <= 6 * META_GRANULE, "{gets:?}");
    // the layer reads its data right (through the chunks)
    for k in (0..model.len() as u64).step_by(3 << 20) {
        let mut buf = vec![0u8; 1 << 20];
        layer.read_at(&mut buf, k).unwrap();
        assert!(buf[..] == model[k as usize..k as usize + buf.len()], "bytes at {k} differ");
    }
    drop(layer);
    // (the reads' read-ahead may still be fetching)
    read_ahead_over(&remote);
    drop(remote);

    // opened again (a restart, the device attached again): the metadata comes from the cache
    let before = proxy.seen().len();
    let cache = BlobCache::open(&dir.path().join("cache"), 1 << 30, CHUNK).unwrap();
    let (layer, _) = open(&cache);
    assert_eq!(proxy.seen()[before..], [], "the second open went to the registry");
    let mut buf = vec![0u8; 4096];
    layer.read_at(&mut buf, 0).unwrap();
    assert!(buf[..] == model[..4096]);
}

#[test]
fn a_read_of_bytes_a_metadata_read_fetched_goes_to_no_registry() {
    use backstore::remote::blob::META_GRANULE;
    const CHUNK: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let blob = random(16 * CHUNK as usize, 11);
    let reg = Registry::start();
    let digest = reg.push_blob("test/metadata", &blob);
    let (proxy, url) = proxied(&reg, "test/metadata");
    let client = Arc::new(RegistryClient::new(ClientOptions::default()).unwrap());
    let cache = BlobCache::open(&dir.path().join("cache"), 1 << 30, CHUNK).unwrap();
    let b = RemoteBlob::new(client, &url, &digest, blob.len() as u64, Some(cache));
    // (requests counted as they arrive; and any read-ahead over)
    let gets = || {
        read_ahead_over(&b);
        proxy.seen().len()
    };
    // a tail as a layer's open reads it: whole granules are fetched, from `from` on
    let tail = blob.len() as u64 - 2 * META_GRANULE - 100;
    let from = tail / META_GRANULE * META_GRANULE;
    let mut m = vec![0u8; (2 * META_GRANULE) as usize];
    b.read_meta_at(&mut m, tail, "the tail").unwrap();
    assert!(m[..] == blob[tail as usize..tail as usize + m.len()]);
    let after_meta = gets();
    // data reads inside those bytes (the last compressed blocks, before the tail) fetch nothing
    for (at, len) in [(from, 4096usize), (from + 100, 8192), (blob.len() as u64 - 10, 10)] {
        let mut buf = vec![0u8; len];
        assert_eq!(b.read_at(&mut buf, at).unwrap(), len);
        assert!(buf[..] == blob[at as usize..at as usize + len], "bytes at {at} differ");
    }
    assert_eq!(gets(), after_meta, "bytes fetched by the metadata read were fetched again");
    // a read that reaches before them is fetched as chunks, as any read
    let mut buf = vec![0u8; 8192];
    b.read_at(&mut buf, from - 4096).unwrap();
    assert!(buf[..] == blob[from as usize - 4096..from as usize + 4096]);
    assert_eq!(gets(), after_meta + 1);
}
