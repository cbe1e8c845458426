//! The configfs side of a TCMU device: the TCMU backstore under `target/core/user_<hba>`, the
//! tcm_loop LUN that turns it into a SCSI disk, finding that disk in sysfs, and the teardown in
//! reverse order (`../shared/spec/snapshotter.md` §8, with the discovery loop fixed to stop on
//! success and fail on timeout).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The configfs target root.
pub const TARGET: &str = "/sys/kernel/config/target";

/// The configfs paths of one device.
#[derive(Clone, Debug)]
pub struct Names {
    /// `user_<hba>` directory.
    pub hba_dir: PathBuf,
    /// HBA number.
    pub hba: u32,
    /// `dev_<id>`.
    pub dev_name: String,
    /// `<hba_dir>/dev_<id>`.
    pub dev_dir: PathBuf,
    /// `naa.199…` loopback WWN.
    pub wwn: String,
    /// `target/loopback/<wwn>`.
    pub loopback_dir: PathBuf,
    /// `<loopback_dir>/tpgt_1`.
    pub tpgt_dir: PathBuf,
    /// `<tpgt_dir>/lun/lun_0`.
    pub lun_dir: PathBuf,
    /// `<lun_dir>/dev_<id>`, the link to `dev_dir`.
    pub lun_link: PathBuf,
}

impl Names {
    /// The names of device `id` on HBA `user_<hba>`.
    pub fn new(hba: u32, id: &str) -> Self {
        let hba_dir = Path::new(TARGET).join("core").join(format!("user_{hba}"));
        let dev_name = format!("dev_{id}");
        let dev_dir = hba_dir.join(&dev_name);
        let wwn = format!("naa.199{}", wwn_suffix(id));
        let loopback_dir = Path::new(TARGET).join("loopback").join(&wwn);
        let tpgt_dir = loopback_dir.join("tpgt_1");
        let lun_dir = tpgt_dir.join("lun").join("lun_0");
        let lun_link = lun_dir.join(&dev_name);
        Names { hba_dir, hba, dev_name, dev_dir, wwn, loopback_dir, tpgt_dir, lun_dir, lun_link }
    }
}

/// 13 hex digits for the WWN: a numeric id zero-padded as the reference does, anything else
/// hashed.
fn wwn_suffix(id: &str) -> String {
    if !id.is_empty() && id.len() <= 13 && id.bytes().all(|b| b.is_ascii_digit()) {
        format!("{id:0>13}")
    } else {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(id.as_bytes()))[..13].to_string()
    }
}

fn write_attr(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| Error::io(path.display().to_string(), format!("write {value:?}"), e))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path.display().to_string(), "mkdir", e))
}

/// Creates and enables the TCMU device: `dev_config=<config>`, its size, the data area and
/// request size limits, then `enable` (retrying EAGAIN for up to 5 s).
pub fn create_device(n: &Names, config: &str, size: u64, max_data_area_mb: u32, max_sectors: u32) -> Result<()> {
    mkdir(&n.dev_dir)?;
    let control = n.dev_dir.join("control");
    write_attr(&control, &format!("dev_config={config}"))?;
    write_attr(&control, &format!("dev_size={size}"))?;
    write_attr(&control, &format!("max_data_area_mb={max_data_area_mb}"))?;
    write_attr(&control, &format!("hw_max_sectors={max_sectors}"))?;
    let enable = n.dev_dir.join("enable");
    for _ in 0..100 {
        match std::fs::write(&enable, "1") {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(Error::io(enable.display().to_string(), "write \"1\"", e)),
        }
    }
    Err(Error::io(enable.display().to_string(), "write \"1\"", std::io::Error::from(ErrorKind::WouldBlock)))
}

/// Sets the kernel's timeout for commands the handler has not answered.
pub fn set_cmd_time_out(n: &Names, secs: u32) -> Result<()> {
    write_attr(&n.dev_dir.join("attrib").join("cmd_time_out"), &secs.to_string())
}

/// The uio device of `n`: `/sys/class/uio/uioK/name` is `tcm-user/<hba>/<dev>/<config>`.
pub fn find_uio(n: &Names) -> Result<Option<(PathBuf, usize)>> {
    let prefix = format!("tcm-user/{}/{}/", n.hba, n.dev_name);
    let Ok(entries) = std::fs::read_dir("/sys/class/uio") else { return Ok(None) };
    for e in entries.flatten() {
        let Ok(name) = std::fs::read_to_string(e.path().join("name")) else { continue };
        if !name.starts_with(&prefix) {
            continue;
        }
        let size_path = e.path().join("maps/map0/size");
        let size = std::fs::read_to_string(&size_path)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| Error::format(size_path.display().to_string(), "uio map size", "unreadable"))?;
        return Ok(Some((Path::new("/dev").join(e.file_name()), size)));
    }
    Ok(None)
}

/// Creates the tcm_loop target, its I_T nexus and LUN 0 linked to the device. The kernel
/// sends INQUIRY as the LUN appears, so the handler must already be serving.
pub fn link_lun(n: &Names) -> Result<()> {
    mkdir(&n.lun_dir)?;
    write_attr(&n.tpgt_dir.join("nexus"), &n.wwn)?;
    std::os::unix::fs::symlink(&n.dev_dir, &n.lun_link)
        .map_err(|e| Error::io(n.lun_link.display().to_string(), "link the LUN", e))
}

/// Finds the SCSI disk of the LUN (`/dev/sdX`) within `timeout`, and sets its command timeout.
pub fn find_disk(n: &Names, timeout: Duration, sd_timeout_secs: u32) -> Result<PathBuf> {
    let addr_path = n.tpgt_dir.join("address");
    let address = std::fs::read_to_string(&addr_path)
        .map_err(|e| Error::io(addr_path.display().to_string(), "read", e))?
        .trim()
        .to_string();
    let block_dir = PathBuf::from(format!("/sys/class/scsi_device/{address}:0/device/block"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(name) = std::fs::read_dir(&block_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
        {
            let t = PathBuf::from(format!("/sys/block/{name}/device/timeout"));
            let dev = Path::new("/dev").join(&name);
            if write_attr(&t, &sd_timeout_secs.to_string()).is_ok() && dev.exists() {
                return Ok(dev);
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::io(
                block_dir.display().to_string(),
                format!("find the SCSI disk of {} (address {address}:0)", n.wwn),
                std::io::Error::new(ErrorKind::TimedOut, format!("no disk appeared within {timeout:?}")),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove(path: &Path, dir: bool) -> Result<()> {
    let r = if dir { std::fs::remove_dir(path) } else { std::fs::remove_file(path) };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path.display().to_string(), if dir { "rmdir" } else { "unlink" }, e)),
    }
}

/// Removes the LUN link, the LUN, the target portal group and the loopback target, in that
/// order; missing entries are fine. The SCSI disk goes away with the LUN.
pub fn unlink_lun(n: &Names) -> Result<()> {
    if std::fs::symlink_metadata(&n.lun_link).is_ok() {
        remove(&n.lun_link, false)?;
    }
    remove(&n.lun_dir, true)?;
    remove(&n.tpgt_dir, true)?;
    remove(&n.loopback_dir, true)
}

/// Removes the TCMU device (its handler must have closed the uio file).
pub fn remove_device(n: &Names) -> Result<()> {
    remove(&n.dev_dir, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference() {
        let n = Names::new(999_999_999, "128");
        assert_eq!(n.wwn, "naa.1990000000000128");
        assert_eq!(n.dev_dir, Path::new("/sys/kernel/config/target/core/user_999999999/dev_128"));
        assert_eq!(
            n.lun_link,
            Path::new("/sys/kernel/config/target/loopback/naa.1990000000000128/tpgt_1/lun/lun_0/dev_128")
        );
        let h = Names::new(1, "3f2a9c0d11aa22bb");
        assert_eq!(h.wwn.len(), "naa.".len() + 16);
        assert!(h.wwn[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
