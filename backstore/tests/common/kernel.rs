//! Helpers for tests with kernel parts: `overlaybd-attach` over fuse-loop, mounts. Need root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// How long a tool may take to attach or detach, or the kernel to release what it held: a bound
/// for waits on events, generous for a loaded machine (it only costs time when something fails).
pub const WAIT: Duration = Duration::from_secs(120);

/// Polls `done` until it holds, panicking (naming `what`) if it does not within `bound`.
pub fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + bound;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out after {bound:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` has `dev` open (one of its /proc/PID/fd links names it).
pub fn holds_open(pid: u32, dev: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == dev))
}

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

    /// SIGTERM, and the process must exit 0 in time, leaving nothing behind. (No wait for the
    /// kernel here: exit 0 means the FUSE mount was unmounted, which the kernel allows only once
    /// the loop device has let go of its backing file, after it removed the device's binding.)
    pub fn stop(mut self) {
        self.sigterm();
        let status = self.wait_exit();
        assert!(status.success(), "overlaybd-attach exited with {status}");
        assert_nothing_left(&self.run_dir);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("overlaybd-attach runs").id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
    }

    /// Whether the process has exited (it stays to be reaped by [`Attach::wait_exit`]).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().expect("overlaybd-attach runs").try_wait().unwrap().is_some()
    }

    /// Waits, at most [`WAIT`], until the process exits: its status (the drop then leaves
    /// everything to the test).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("overlaybd-attach runs");
        let status = wait_timeout(child, WAIT).expect("overlaybd-attach did not exit in time");
        self.child = None;
        status
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

/// No loop device backed by, and no mount under, `run_dir` within [`WAIT`]: for after an event
/// whose kernel cleanup may finish later (the last holder of a loop device closed it).
pub fn wait_nothing_left(run_dir: &Path) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline
        && !(backstore::frontend::loop_dev::attached_under(run_dir).is_empty() && mounts_under(run_dir).is_empty())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_nothing_left(run_dir);
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
