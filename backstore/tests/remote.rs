//! Remote layers against a real registry (Debian's docker-registry, started by the tests).

mod common;

use std::time::{Duration, Instant};

use backstore::remote::credentials::CredentialFile;
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
fn a_missing_blob_fails_at_once_with_the_url() {
    let reg = Registry::start();
    let c = RegistryClient::new(ClientOptions::default()).unwrap();
    let start = Instant::now();
    let e = c.read_range(&reg.blob_url("library/none"), &format!("sha256:{}", "0".repeat(64)), 0, 10).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5), "a 404 is not retried");
    let msg = e.to_string();
    assert!(msg.contains("library/none") && msg.contains("404"), "{msg}");
}

#[test]
fn an_unreachable_registry_gives_up_in_bounded_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = RegistryClient::new(ClientOptions {
        retry: backstore::remote::retry::RetryPolicy { deadline: Duration::from_secs(3), ..Default::default() },
        credentials: Some(CredentialFile::new("/nonexistent")),
        ..Default::default()
    })
    .unwrap();
    let start = Instant::now();
    let e = c.read_range(&format!("http://127.0.0.1:{port}/v2/x/blobs"), "sha256:00", 0, 10).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(e.to_string().contains("tries"), "{e}");
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
            credentials: with_cred.then(|| CredentialFile::new(&cred)),
            ..Default::default()
        })
        .unwrap()
    };
    // a wrong password: a clear, fast error naming the registry and the credential file
    write_cred("wrong");
    let c = client(true);
    let start = Instant::now();
    let e = c.read_range(&url, &digest, 0, 100).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(5), "authentication failures are not retried");
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
