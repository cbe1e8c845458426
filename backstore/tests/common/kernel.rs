//! Helpers for tests with kernel parts: `overlaybd-attach` over fuse-loop, mounts. Need root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// How long a tool may take to attach or detach.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "the fuse-loop tests need root (loop devices, FUSE, mount)");
}

/// A running `overlaybd-attach`; killed and cleaned up on drop.
pub struct Attach {
    pub child: Option<Child>,
    pub device: PathBuf,
    pub run_dir: PathBuf,
}

impl Attach {
    pub fn start(config: &Path, run_dir: &Path) -> Attach {
        Attach::start_with(config, run_dir, &[])
    }

    /// As [`Attach::start`], with extra arguments.
    pub fn start_with(config: &Path, run_dir: &Path, extra: &[&str]) -> Attach {
        Attach::start_env(config, run_dir, extra, &[])
    }

    /// As [`Attach::start_with`], with extra environment variables.
    pub fn start_env(config: &Path, run_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Attach {
        let mut child = Command::new(bin("overlaybd-attach"))
            .args(["--frontend", "fuse-loop", "--run-dir"])
            .arg(run_dir)
            .args(extra)
            .envs(env.iter().copied())
            .arg(config)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start overlaybd-attach");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut a = Attach { child: Some(child), device: PathBuf::new(), run_dir: run_dir.to_path_buf() };
        let line = rx.recv_timeout(WAIT).expect("overlaybd-attach printed no device path in time");
        assert!(line.starts_with("/dev/"), "first line of stdout is not a device: {line:?}");
        a.device = PathBuf::from(line.trim());
        a
    }

    /// SIGTERM, and the process must exit 0 in time.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = wait_timeout(&mut child, WAIT).expect("overlaybd-attach did not exit after SIGTERM");
        assert!(status.success(), "overlaybd-attach exited with {status}");
        assert_nothing_left(&self.run_dir);
    }

    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        wait_timeout(&mut child, WAIT).expect("killed process did not go away");
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = Command::new(bin("overlaybd-attach")).arg("--cleanup").arg("--run-dir").arg(&self.run_dir).output();
        }
    }
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// No loop device backed by, and no mount under, `run_dir`.
pub fn assert_nothing_left(run_dir: &Path) {
    let loops = backstore::frontend::loop_dev::attached_under(run_dir);
    assert!(loops.is_empty(), "loop devices left behind: {loops:?}");
    let left = mounts_under(run_dir);
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

/// The mountinfo lines that name a path under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts.lines().filter(|l| l.contains(dir.to_str().unwrap())).map(str::to_string).collect()
}

/// A mounted file system, unmounted on drop.
pub struct Mount(pub PathBuf);
impl Mount {
    pub fn new(dev: &Path, at: &Path, ro: bool) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let mut c = Command::new("mount");
        if ro {
            c.args(["-o", "ro"]);
        }
        run(c.arg(dev).arg(at));
        Mount(at.to_path_buf())
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.0).status();
        if !matches!(st, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}
