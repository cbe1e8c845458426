//! `record-trace`'s isolated network (`snapshotter.md` §10.4 step 3): a named network namespace
//! (`ip netns add`) with a loopback and a CNI bridge `r-trace-br0` (10.99.0.0/16 and
//! 2001:4860:4860::/64 from host-local, IP masquerade, no gateway), set up and torn down by
//! running the CNI plugins as go-cni does (CNI 0.3.1, the config on stdin, `CNI_*` in the
//! environment).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// The bridge's name.
pub const BRIDGE: &str = "r-trace-br0";
/// The plugins the network needs.
pub const PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// Bound of one plugin or `ip` run.
pub const STEP: Duration = Duration::from_secs(60);

/// The loopback network (go-cni's `WithLoNetwork`), on `lo`.
fn loopback() -> Value {
    json!({"cniVersion": "0.3.1", "name": "cni-loopback", "type": "loopback"})
}

/// The bridge network of the reference's `record-trace-cni` list, on `eth0`.
fn bridge() -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": "record-trace-cni",
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": false,
        "ipMasq": true,
        "promiscMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.99.0.0/16"}], [{"subnet": "2001:4860:4860::/64"}]],
            "routes": []
        }
    })
}

/// Checks that `dir` has the plugins, before anything is created.
pub fn check_plugins(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = PLUGINS.iter().copied().filter(|p| !dir.join(p).is_file()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "the network isolation needs the CNI plugins {} in --cni-plugin-dir {}, which has no {}: install the CNI \
         plugins (e.g. Debian's containernetworking-plugins, then --cni-plugin-dir /usr/lib/cni), or record without \
         network isolation (--disable-network-isolation)",
        PLUGINS.join(", "),
        dir.display(),
        missing.join(", ")
    )))
}

/// A network namespace and what was set up in it, torn down by [`Network::teardown`].
pub struct Network {
    /// The namespace's name (`ip netns`), also the CNI container ID.
    pub name: String,
    /// `/var/run/netns/<name>`.
    pub path: PathBuf,
    plugin_dir: PathBuf,
    created: bool,
    added: Vec<(&'static str, Value)>,
}

impl Network {
    /// Nothing created yet.
    pub fn new(name: &str, plugin_dir: &Path) -> Network {
        Network {
            name: name.to_string(),
            path: Path::new("/var/run/netns").join(name),
            plugin_dir: plugin_dir.to_path_buf(),
            created: false,
            added: Vec::new(),
        }
    }

    /// Creates the namespace and adds the loopback and the bridge network to it.
    pub async fn setup(&mut self) -> Result<()> {
        check_plugins(&self.plugin_dir)?;
        run_ip(&["netns", "add", &self.name]).await?;
        self.created = true;
        for (ifname, conf) in [("lo", loopback()), ("eth0", bridge())] {
            self.plugin("ADD", ifname, &conf).await?;
            self.added.push((ifname, conf));
        }
        Ok(())
    }

    /// Removes what [`Network::setup`] made (networks in reverse order, then the namespace);
    /// what could not be removed.
    pub async fn teardown(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        while let Some((ifname, conf)) = self.added.pop() {
            if let Err(e) = self.plugin("DEL", ifname, &conf).await {
                left.push(format!("CNI network {} of {}: {e}", conf["name"], self.name));
            }
        }
        if self.created {
            match run_ip(&["netns", "delete", &self.name]).await {
                Ok(()) => self.created = false,
                Err(e) => left.push(format!("network namespace {}: {e}", self.name)),
            }
        }
        left
    }

    async fn plugin(&self, command: &str, ifname: &str, conf: &Value) -> Result<()> {
        let kind = conf["type"].as_str().unwrap_or_default();
        let bin = self.plugin_dir.join(kind);
        let what = format!("CNI plugin {} {command} ({ifname} in {})", bin.display(), self.name);
        let mut child = tokio::process::Command::new(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.name)
            .env("CNI_NETNS", &self.path)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.plugin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(&what, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes()).await.map_err(|e| Error::io(&what, e))?;
        }
        let out = tokio::time::timeout(STEP, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout { what: what.clone(), after: STEP })?
            .map_err(|e| Error::io(&what, e))?;
        if out.status.success() {
            return Ok(());
        }
        // a CNI error is a JSON object on stdout with `msg` and `details`
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let msg = match (reply["msg"].as_str(), reply["details"].as_str()) {
            (Some(m), Some(d)) if !d.is_empty() => format!("{m}: {d}"),
            (Some(m), _) => m.to_string(),
            _ => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
                .trim()
                .to_string(),
        };
        Err(Error::Image(format!("{what} failed ({}): {msg}", out.status)))
    }
}

async fn run_ip(args: &[&str]) -> Result<()> {
    let what = format!("ip {}", args.join(" "));
    let out = tokio::time::timeout(STEP, tokio::process::Command::new("ip").args(args).kill_on_drop(true).output())
        .await
        .map_err(|_| Error::Timeout { what: what.clone(), after: STEP })?
        .map_err(|e| Error::io(format!("{what} (is iproute2 installed?)"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Image(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_plugins_are_named_with_the_way_out() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("bridge"), b"").unwrap();
        let e = check_plugins(d.path()).unwrap_err().to_string();
        assert!(e.contains("host-local, loopback") && e.contains("--disable-network-isolation"), "{e}");
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        for p in PLUGINS {
            std::fs::write(d.path().join(p), b"").unwrap();
        }
        assert!(check_plugins(d.path()).is_ok());
    }

    #[test]
    fn the_bridge_is_the_reference_one() {
        let b = bridge();
        assert_eq!(b["bridge"], BRIDGE);
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "10.99.0.0/16");
        assert_eq!((b["ipMasq"].as_bool(), b["isGateway"].as_bool()), (Some(true), Some(false)));
    }
}
