//! The OCI runtime spec of `record-trace`'s container: containerd's default Linux spec
//! (`oci.WithDefaultSpec` + `WithDefaultUnixDevices`, as `ctr run` builds it) with the image
//! config's process (`oci.WithImageConfig`: entrypoint and command, env, working directory,
//! user), the command line's arguments instead when given, and the network namespace.

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The `Any` type URL containerd stores a runtime spec under.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// `PATH` when the image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities containerd gives a container by default.
const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The process of an image config (`config.config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageProcess {
    /// Entrypoint + Cmd, or the command line's arguments.
    pub args: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Working directory (`/` when empty).
    pub cwd: String,
    /// `User` as the image gives it (`""`, `uid`, `uid:gid`, `name`, `name:group`).
    pub user: String,
}

impl ImageProcess {
    /// From the image config document; `args` replace entrypoint and command when not empty.
    pub fn from_config(config: &Value, args: &[String], what: &str) -> Result<ImageProcess> {
        let c = config.get("config").cloned().unwrap_or(Value::Null);
        let strings = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let args = if args.is_empty() {
            let mut a = strings("Entrypoint");
            a.extend(strings("Cmd"));
            a
        } else {
            args.to_vec()
        };
        if args.is_empty() {
            return Err(Error::Image(format!(
                "{what} has no entrypoint or command: give the COMMAND the container runs"
            )));
        }
        let mut env = strings("Env");
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let get = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Ok(ImageProcess { args, env, cwd: get("WorkingDir"), user: get("User") })
    }

    /// Whether `user` needs the image's `/etc/passwd` or `/etc/group` to be resolved.
    pub fn needs_passwd(&self) -> bool {
        let (u, g) = split_user(&self.user);
        let numeric = |s: &str| s.parse::<u32>().is_ok();
        !u.is_empty() && (!numeric(u) || !g.is_some_and(numeric))
    }
}

fn split_user(user: &str) -> (&str, Option<&str>) {
    match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    }
}

/// Resolves `user` to (uid, gid, additional gids) as containerd's `WithUser` does, with the
/// image's `/etc/passwd` and `/etc/group` (empty when the image has none).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32, Vec<u32>)> {
    let (u, g) = split_user(user);
    if u.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let users: Vec<Vec<&str>> =
        passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 4).collect();
    let groups: Vec<Vec<&str>> =
        group.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 3).collect();
    let entry = users.iter().find(|f| f[0] == u || f[2] == u);
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| Error::Image(format!("user {u:?} is not in the image's /etc/passwd")))?,
    };
    let name = entry.map(|f| f[0]).unwrap_or_default();
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| Error::Image(format!("group {g:?} is not in the image's /etc/group")))?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let mut extra = Vec::new();
    if g.is_none() && !name.is_empty() {
        for f in &groups {
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(n) = f[2].parse::<u32>() {
                    if n != gid && !extra.contains(&n) {
                        extra.push(n);
                    }
                }
            }
        }
    }
    Ok((uid, gid, extra))
}

/// The spec of container `id` in containerd namespace `namespace`, running `p` as
/// (`uid`, `gid`, `extra_gids`), in the network namespace at `netns` (a new empty one when
/// `None`).
pub fn spec(namespace: &str, id: &str, p: &ImageProcess, user: (u32, u32, &[u32]), netns: Option<&str>) -> Value {
    let caps: Vec<&str> = CAPS.to_vec();
    let mut net = json!({"type": "network"});
    if let Some(path) = netns {
        net["path"] = Value::String(path.to_string());
    }
    let mut user_v = json!({"uid": user.0, "gid": user.1});
    if !user.2.is_empty() {
        user_v["additionalGids"] = json!(user.2);
    }
    let dev = |path: &str, major: i64, minor: i64| json!({"path": path, "type": "c", "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0});
    let allow = |major: Value, minor: Value| json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"});
    json!({
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs"},
        "process": {
            "user": user_v,
            "args": p.args,
            "env": p.env,
            "cwd": if p.cwd.is_empty() { "/" } else { p.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "devices": [dev("/dev/null", 1, 3), dev("/dev/random", 1, 8), dev("/dev/full", 1, 7), dev("/dev/tty", 5, 0), dev("/dev/zero", 1, 5), dev("/dev/urandom", 1, 9)],
            "resources": {"devices": [
                {"allow": false, "access": "rwm"},
                allow(json!(1), json!(3)), allow(json!(1), json!(8)), allow(json!(1), json!(7)), allow(json!(5), json!(0)),
                allow(json!(1), json!(5)), allow(json!(1), json!(9)), allow(json!(5), json!(1)), allow(json!(136), Value::Null),
                allow(json!(5), json!(2)), allow(json!(10), json!(200))
            ]},
            "cgroupsPath": format!("/{namespace}/{id}"),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, net],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_comes_from_the_image_config_or_the_command_line() {
        let cfg =
            json!({"config": {"Entrypoint": ["/e"], "Cmd": ["c"], "Env": ["A=1"], "WorkingDir": "/w", "User": "7"}});
        let p = ImageProcess::from_config(&cfg, &[], "img").unwrap();
        assert_eq!(p.args, ["/e", "c"]);
        assert_eq!(p.env, [DEFAULT_PATH, "A=1"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/w", "7"));
        let p = ImageProcess::from_config(&cfg, &["sh".into(), "-c".into()], "img").unwrap();
        assert_eq!(p.args, ["sh", "-c"]);
        let e = ImageProcess::from_config(&json!({"config": {}}), &[], "img").unwrap_err().to_string();
        assert!(e.contains("img has no entrypoint or command"), "{e}");
        let s = spec("ns", "id", &p, (0, 0, &[]), Some("/var/run/netns/x"));
        assert_eq!(s["linux"]["cgroupsPath"], "/ns/id");
        assert_eq!(s["linux"]["namespaces"][4], json!({"type": "network", "path": "/var/run/netns/x"}));
        assert_eq!(s["process"]["cwd"], "/w");
        assert_eq!(s["process"]["args"], json!(["sh", "-c"]));
        let s = spec("ns", "id", &ImageProcess { args: vec!["x".into()], ..Default::default() }, (1, 2, &[3]), None);
        assert_eq!(s["process"]["cwd"], "/");
        assert_eq!(s["process"]["user"], json!({"uid": 1, "gid": 2, "additionalGids": [3]}));
        assert_eq!(s["linux"]["namespaces"][4], json!({"type": "network"}));
    }

    #[test]
    fn users_resolve_like_containerd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nredis:x:999:998::/data:/bin/false\n";
        let group = "root:x:0:\nredis:x:998:\nextra:x:50:redis,other\n";
        assert_eq!(resolve_user("", passwd, group).unwrap(), (0, 0, vec![]));
        assert_eq!(resolve_user("redis", passwd, group).unwrap(), (999, 998, vec![50]));
        assert_eq!(resolve_user("999", passwd, group).unwrap(), (999, 998, vec![50]));
        assert_eq!(resolve_user("1000", passwd, group).unwrap(), (1000, 0, vec![]));
        assert_eq!(resolve_user("1000:1001", "", "").unwrap(), (1000, 1001, vec![]));
        assert_eq!(resolve_user("redis:root", passwd, group).unwrap(), (999, 0, vec![]));
        assert!(resolve_user("nobody", passwd, group).unwrap_err().to_string().contains("nobody"));
        assert!(resolve_user("0:nogroup", passwd, group).is_err());
        let p = |u: &str| ImageProcess { user: u.into(), ..Default::default() }.needs_passwd();
        assert!(!p("") && !p("1:2") && p("1") && p("redis") && p("1:grp"));
    }
}
