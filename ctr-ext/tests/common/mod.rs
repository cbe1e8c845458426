//! Real parts for `ctr-obd`'s end-to-end tests, each started by the test and stopped on drop:
//! Debian's `docker-registry`, `containerd` with a private config and `runc`, and the
//! `overlaybd-snapshotter` binary of this build (`target/debug/`) on the fuse-loop frontend;
//! images are built here as OCI layouts and pushed with `skopeo`. Copied (trimmed) from the
//! snapshotter's `tests/common/mod.rs`, whose snapshotter fixture names its binary with
//! `CARGO_BIN_EXE_*`, which only that package's tests have.

#![allow(dead_code, clippy::result_large_err)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// `sha256` hex of bytes.
pub fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Whether the machine has what these tests need (root, containerd, runc, a registry, skopeo,
/// FUSE and loop devices). Without them the tests fail with this message rather than pass.
pub fn require_real_parts() {
    assert!(nix::unistd::geteuid().is_root(), "the end-to-end tests need root (mounts, loop devices)");
    for b in ["containerd", "ctr", "runc", "docker-registry", "skopeo"] {
        assert!(
            Command::new("sh").arg("-c").arg(format!("command -v {b}")).output().is_ok_and(|o| o.status.success()),
            "{b} is missing: run scripts/deps.sh"
        );
    }
    assert!(Path::new("/dev/fuse").exists() && Path::new("/dev/loop-control").exists(), "no FUSE or loop devices");
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < end, "{what} did not happen within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command; its output whatever the status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let o = output(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------

/// A plain-HTTP registry on 127.0.0.1 with its access log.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    log: PathBuf,
    creds: Option<String>,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// Starts one that serves only `user` with `password` (HTTP basic authentication).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user, password)))
    }

    fn launch(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        let mut auth_yaml = String::new();
        if let Some((user, password)) = auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap())).unwrap();
            auth_yaml = format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", htpasswd.display());
        }
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::from(std::fs::File::create(dir.path().join("stdout.log")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start docker-registry");
        let host = format!("127.0.0.1:{port}");
        let creds = auth.map(|(u, p)| format!("{u}:{p}"));
        let r = Registry { child, host, log, creds, _dir: dir };
        wait_until("the registry start", 30, || std::net::TcpStream::connect(&r.host).is_ok());
        r
    }

    /// The access log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Deletes blob `digest` from the registry's storage (its links stay: the registry then
    /// answers "blob unknown").
    pub fn delete_blob(&self, digest: &str) {
        let hex = digest.trim_start_matches("sha256:");
        let p = self._dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex);
        std::fs::remove_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// Pushes an OCI layout's `tag` as `name:tag` here.
    pub fn push(&self, layout: &Path, tag: &str, name: &str) -> String {
        let dest = format!("{}/{name}:{tag}", self.host);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false", "--preserve-digests"]);
        if let Some(c) = &self.creds {
            cmd.arg("--dest-creds").arg(c);
        }
        run(cmd.arg(format!("oci:{}:{tag}", layout.display())).arg(format!("docker://{dest}")));
        dest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------

/// An OCI image layout being written.
pub struct OciLayout {
    /// Its directory.
    pub dir: PathBuf,
}

/// A file of a layer.
pub enum Entry {
    /// A regular file with its mode.
    File(&'static str, Vec<u8>, u32),
    /// A directory.
    Dir(&'static str),
    /// A symbolic link.
    Symlink(&'static str, &'static str),
    /// A whiteout of the named path.
    Whiteout(&'static str),
}

impl OciLayout {
    /// An empty layout in `dir`.
    pub fn new(dir: &Path) -> OciLayout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        OciLayout { dir: dir.to_path_buf() }
    }

    /// Stores a blob; its digest.
    pub fn blob(&self, data: &[u8]) -> String {
        let h = sha256(data);
        std::fs::write(self.dir.join("blobs/sha256").join(&h), data).unwrap();
        format!("sha256:{h}")
    }

    /// A gzip layer tar of `entries`: (descriptor JSON, diff ID).
    pub fn layer(&self, entries: &[Entry]) -> (String, String) {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                Entry::File(p, data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, data.as_slice()).unwrap();
                }
                Entry::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
                Entry::Symlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                Entry::Whiteout(p) => {
                    let path = Path::new(p);
                    let name = format!(".wh.{}", path.file_name().unwrap().to_string_lossy());
                    let wh = path.parent().map_or(PathBuf::from(&name), |d| d.join(&name));
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_data(&mut h, wh, std::io::empty()).unwrap();
                }
            }
        }
        let tar = b.into_inner().unwrap();
        let diff = format!("sha256:{}", sha256(&tar));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let d = self.blob(&gz);
        (
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#,
                gz.len()
            ),
            diff,
        )
    }

    /// Writes config, manifest and index for `layers` under `tag`.
    pub fn finish(&self, layers: &[(String, String)], tag: &str, cmd: &[&str]) {
        let diffs: Vec<String> = layers.iter().map(|(_, d)| format!("\"{d}\"")).collect();
        let cmd: Vec<String> = cmd.iter().map(|c| format!("\"{c}\"")).collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":[{}]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            cmd.join(","),
            diffs.join(",")
        );
        let cd = self.blob(config.as_bytes());
        let descs: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            descs.join(",")
        );
        self.index(&manifest, tag);
    }

    /// Stores `manifest` and makes it the layout's only entry, tagged `tag`.
    pub fn index(&self, manifest: &str, tag: &str) {
        let md = self.blob(manifest.as_bytes());
        std::fs::write(
            self.dir.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
                manifest.len()
            ),
        )
        .unwrap();
    }
}

/// busybox-static with its applets: the base of the test images.
pub fn busybox_entries() -> Vec<Entry> {
    let mut v = vec![
        Entry::Dir("bin"),
        Entry::Dir("etc"),
        Entry::Dir("tmp"),
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::Dir("dev"),
        Entry::File("bin/busybox", std::fs::read("/bin/busybox").expect("busybox-static"), 0o755),
    ];
    for a in ["sh", "echo", "cat", "ls", "sha256sum", "find", "stat", "readlink", "sync", "sleep", "dd", "rm", "head"] {
        v.push(Entry::Symlink(Box::leak(format!("bin/{a}").into_boxed_str()), "busybox"));
    }
    v
}

/// The test's busybox image: layer 1 busybox + /etc files + a 3 MB random file, layer 2 adds a
/// file, whites one out and adds a symlink. Returns the layout and the big file's sha256.
pub fn busybox_image(dir: &Path) -> (OciLayout, String) {
    let o = OciLayout::new(dir);
    let mut big = vec![0u8; 3_000_000];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big_sha = sha256(&big);
    let mut e1 = busybox_entries();
    e1.push(Entry::File("etc/gone", b"first\n".to_vec(), 0o644));
    e1.push(Entry::File("etc/keep", b"keep\n".to_vec(), 0o644));
    e1.push(Entry::File("etc/big", big, 0o644));
    let l1 = o.layer(&e1);
    let l2 = o.layer(&[
        Entry::File("etc/new", b"second\n".to_vec(), 0o644),
        Entry::Whiteout("etc/gone"),
        Entry::Symlink("etc/link", "keep"),
    ]);
    o.finish(&[l1, l2], "latest", &["/bin/sh"]);
    (o, big_sha)
}

/// An overlaybd image of the same content as [`busybox_image`]'s first layer plus a shell, made
/// with the backstore's tools as the convertor does (mkfs, apply, commit -z -t), as `tag`.
pub fn busybox_overlaybd_image(dir: &Path, tag: &str) -> (OciLayout, String) {
    let o = OciLayout::new(&dir.join("oci"));
    let (plain, big_sha) = busybox_image(&dir.join("plain"));
    // the plain image's first layer and its diff ID
    let json = |hex: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(plain.dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let hex_of = |v: &serde_json::Value| v.as_str().unwrap().trim_start_matches("sha256:").to_string();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plain.dir.join("index.json")).unwrap()).unwrap();
    let manifest = json(&hex_of(&index["manifests"][0]["digest"]));
    let config = json(&hex_of(&manifest["config"]["digest"]));
    let blob = plain.dir.join("blobs/sha256").join(hex_of(&manifest["layers"][0]["digest"]));
    let diff_id = config["rootfs"]["diff_ids"][0].as_str().unwrap().to_string();
    let opts = convertor::layer::Options { vsize_gb: 8, ..Default::default() };
    let built =
        convertor::layer::build(&dir.join("work"), 0, &blob, &diff_id, std::slice::from_ref(&diff_id), &[], &opts)
            .unwrap();
    o.blob(&std::fs::read(&built.file).unwrap());
    let desc = convertor::image::layer_descriptor(&built, convertor::image::MediaTypes { oci: true }).to_string();
    o.finish(&[(desc, built.digest.clone())], tag, &["/bin/sh"]);
    (o, big_sha)
}

// ---------------------------------------------------------------------------------------------

/// The snapshotter under test, started from this build's binary.
pub struct Snapshotter {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its root.
    pub root: PathBuf,
    /// Its frontend state.
    pub run_dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

impl Snapshotter {
    /// Starts one in `dir` with extra TOML config lines.
    pub fn start(dir: &Path, extra_toml: &str) -> Snapshotter {
        let s = Snapshotter {
            child: None,
            socket: dir.join("snap.sock"),
            root: dir.join("root"),
            run_dir: dir.join("run"),
            config: dir.join("config.toml"),
            log: dir.join("snapshotter.log"),
        };
        std::fs::write(&s.config, extra_toml).unwrap();
        let mut s = s;
        s.restart();
        s
    }

    /// (Re)starts the process.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(snapshotter_binary())
            .arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .arg("--address")
            .arg(&self.socket)
            .arg("--frontend")
            .arg("fuse-loop")
            .arg("--run-dir")
            .arg(&self.run_dir)
            .env("RUST_LOG", "info,snapshotter=debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start overlaybd-snapshotter");
        self.child = Some(child);
        let sock = self.socket.clone();
        let end = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the snapshotter exited ({st}): {}", self.log_text());
            }
            assert!(Instant::now() < end, "the snapshotter did not open its socket: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it with `signal` and waits (bounded).
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the snapshotter did not stop on {signal}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(nix::sys::signal::Signal::SIGTERM);
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A private containerd whose proxy plugin `overlaybd` is the snapshotter's socket.
pub struct Containerd {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its namespace for the test.
    pub namespace: String,
    dir: PathBuf,
}

impl Containerd {
    /// Starts one in `dir` for the snapshotter at `snap_socket`.
    pub fn start(dir: &Path, snap_socket: &Path, namespace: &str) -> Containerd {
        Containerd::launch(dir, snap_socket, namespace, "")
    }

    /// Starts one whose garbage collector runs only when a client asks for it (`image rm
    /// --sync`). `ctr snapshots prepare/commit/view` take no lease, so under the default
    /// scheduler a collection set off by an earlier deletion may remove what they create
    /// between two commands.
    pub fn start_with_gc_on_request(dir: &Path, snap_socket: &Path, namespace: &str) -> Containerd {
        Containerd::launch(
            dir,
            snap_socket,
            namespace,
            "[plugins.\"io.containerd.gc.v1.scheduler\"]\n  deletion_threshold = 1000000\n  \
             mutation_threshold = 1000000\n  startup_delay = \"0s\"\n",
        )
    }

    fn launch(dir: &Path, snap_socket: &Path, namespace: &str, extra_toml: &str) -> Containerd {
        let d = dir.join("containerd");
        std::fs::create_dir_all(&d).unwrap();
        let socket = d.join("containerd.sock");
        let cfg = d.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n{3}\n\
                 [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n\
                 [proxy_plugins.overlaybd]\n  type = \"snapshot\"\n  address = \"{2}\"\n{4}",
                d.display(),
                socket.display(),
                snap_socket.display(),
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]",
                extra_toml
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::from(std::fs::File::create(d.join("log")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(d.join("log.err")).unwrap()))
            .spawn()
            .expect("start containerd");
        let c = Containerd { child, socket, namespace: namespace.to_string(), dir: d };
        wait_until("containerd start", 30, || c.ctr_output(&["version"]).status.success());
        c
    }

    /// containerd's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("log.err")).unwrap_or_default()
    }

    /// `ctr -a SOCK -n NS ARGS...` and its output.
    pub fn ctr_output(&self, args: &[&str]) -> Output {
        output(Command::new("ctr").arg("-a").arg(&self.socket).arg("-n").arg(&self.namespace).args(args))
    }

    /// `ctr` that must succeed: its stdout and stderr.
    pub fn ctr(&self, args: &[&str]) -> String {
        let o = self.ctr_output(args);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "ctr {args:?} failed: {text}");
        text
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for c in self.ctr_output(&["task", "ls", "-q"]).stdout.split(|b| *b == b'\n') {
            let id = String::from_utf8_lossy(c).trim().to_string();
            if !id.is_empty() {
                let _ = self.ctr_output(&["task", "kill", "-s", "KILL", &id]);
                let _ = self.ctr_output(&["task", "rm", "-f", &id]);
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // the shims' mounts and containerd's cgroups for the namespace
        for m in std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
            if let Some(t) = m.split(' ').nth(4) {
                if t.starts_with(&self.dir.display().to_string()) {
                    let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.namespace));
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path().join(&self.namespace));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// `target/debug/overlaybd-snapshotter` of this build, found from the test binary
/// (`target/debug/deps/<test>`).
pub fn snapshotter_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().and_then(Path::parent).expect("the test binary is in target/<profile>/deps");
    let bin = dir.join("overlaybd-snapshotter");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p overlaybd-snapshotter` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// The snapshotter config lines that let it read `reg` (plain HTTP on 127.0.0.1).
pub fn insecure(reg: &Registry) -> String {
    format!("[[mirrorRegistry]]\nhost = \"{}\"\ninsecure = true\n", reg.host)
}

/// `ctr-obd -a SOCK -n NS ARGS...` with `TMPDIR` = `tmp`: its output whatever the status.
pub fn ctr_obd_output(c: &Containerd, tmp: &Path, args: &[&str]) -> Output {
    std::fs::create_dir_all(tmp).unwrap();
    output(
        Command::new(env!("CARGO_BIN_EXE_ctr-obd"))
            .arg("-a")
            .arg(&c.socket)
            .arg("-n")
            .arg(&c.namespace)
            .args(args)
            .env("TMPDIR", tmp)
            .env("RUST_LOG", "info"),
    )
}

/// `ctr-obd` that must succeed: its stdout.
pub fn ctr_obd(c: &Containerd, tmp: &Path, args: &[&str]) -> String {
    let o = ctr_obd_output(c, tmp, args);
    assert!(
        o.status.success(),
        "ctr-obd {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ctr-obd` that must fail: its stderr.
pub fn ctr_obd_fails(c: &Containerd, tmp: &Path, args: &[&str]) -> String {
    let o = ctr_obd_output(c, tmp, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "ctr-obd {args:?} succeeded: {}\n{err}", String::from_utf8_lossy(&o.stdout));
    eprintln!("ctr-obd {args:?} failed as expected:\n{err}");
    err
}
