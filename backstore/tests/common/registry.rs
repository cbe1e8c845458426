//! A real registry for tests: Debian's `docker-registry` on 127.0.0.1, started on a free port
//! with its storage in a temporary directory, stopped on drop. Blobs are pushed with the
//! distribution API (monolithic upload).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
pub struct Registry {
    child: Child,
    /// `http://127.0.0.1:PORT` (or https).
    pub base: String,
    /// Its log (stderr), for the access records. A request is logged when its handler ends,
    /// which may be after its client got the answer: to count requests, put a
    /// `Proxy` in front (it counts them as they arrive).
    pub log: PathBuf,
    /// The CA certificate (PEM) of a TLS registry.
    pub ca_pem: Option<Vec<u8>>,
    /// The user and password of an htpasswd registry.
    pub login: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// How long the registry may take to come up.
const START_LIMIT: Duration = Duration::from_secs(120);

/// An HTTP client that trusts `ca_pem` too.
fn client_for(ca_pem: Option<&[u8]>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder();
    if let Some(pem) = ca_pem {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap());
    }
    b.build().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Registry {
    /// Starts a plain-HTTP registry without authentication.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// Starts a registry behind TLS (a certificate for 127.0.0.1 made here) that asks for
    /// `user`/`password` (htpasswd, Basic).
    pub fn start_tls_htpasswd(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user, password)))
    }

    fn launch(secure: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = String::new();
        let mut ca_pem = None;
        if let Some((user, password)) = secure {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
            ca_pem = Some(cert.pem().into_bytes());
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            extra = format!(
                "  tls:\n    certificate: {0}/cert.pem\n    key: {0}/key.pem\nauth:\n  htpasswd:\n    realm: test-realm\n    path: {0}/htpasswd\n",
                dir.path().display()
            );
        }
        let cfg = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");
        let scheme = if secure.is_some() { "https" } else { "http" };
        let login = secure.map(|(u, p)| (u.to_string(), p.to_string()));
        let deadline = Instant::now() + START_LIMIT;
        // The port is free when `free_port` returns, but anything may take it before the registry
        // binds it (another test's registry, a connection's local port): the registry then exits,
        // and is started again on another port.
        for attempt in 1.. {
            let port = free_port();
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdout(Stdio::from(std::fs::File::create(dir.path().join("stdout.log")).unwrap()))
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
                .spawn()
                .expect("start docker-registry (apt-get install docker-registry)");
            let base = format!("{scheme}://127.0.0.1:{port}");
            let client = client_for(ca_pem.as_deref());
            loop {
                // up once it has said it listens (so the port is its own, not another's) and answers
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("listening on") && client.get(format!("{base}/v2/")).send().is_ok() {
                    return Registry { child, base, log, ca_pem, login, _dir: dir };
                }
                if child.try_wait().unwrap().is_some() {
                    assert!(attempt < 10, "the registry did not start, {attempt} times:\n{text}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the registry did not come up in {START_LIMIT:?}:\n{text}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!()
    }

    /// An HTTP client that trusts the registry's certificate.
    pub fn client(&self) -> reqwest::blocking::Client {
        client_for(self.ca_pem.as_deref())
    }

    fn with_login(&self, r: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.login {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// What it logged so far (see [`Registry::log`]).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pushes `data` as a blob of `repo`; returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", super::sha256(data));
        let c = self.client();
        let r = self.with_login(c.post(format!("{}/v2/{repo}/blobs/uploads/", self.base))).send().unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload: {}", r.text().unwrap_or_default());
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") { loc } else { format!("{}{loc}", self.base) };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .with_login(c.put(format!("{loc}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "finish upload: {}", r.text().unwrap_or_default());
        digest
    }

    /// Pushes the reference hello-world image (its overlaybd manifest, config and layer, as
    /// the reference convertor made them) as `repo:tag`; returns the layer's digest and size.
    pub fn push_reference_image(&self, repo: &str, tag: &str) -> (String, u64) {
        let read = |n: &str| std::fs::read(super::reference(n)).unwrap();
        let layer = read("hello-world-amd64-overlaybd-layer.tar");
        let digest = self.push_blob(repo, &layer);
        self.push_blob(repo, &read("hello-world-amd64-overlaybd-config.json"));
        let manifest = read("hello-world-amd64-overlaybd-manifest.json");
        let r = self
            .with_login(self.client().put(format!("{}/v2/{repo}/manifests/{tag}", self.base)))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "push the manifest: {}", r.text().unwrap_or_default());
        (digest, layer.len() as u64)
    }

    /// `http://127.0.0.1:PORT/v2/<repo>/blobs`, the `repoBlobUrl` of a config.
    pub fn blob_url(&self, repo: &str) -> String {
        format!("{}/v2/{repo}/blobs", self.base)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
