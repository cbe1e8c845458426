//! The fuse-loop frontend with real parts: `overlaybd-attach` as a process, the kernel's loop
//! device and FUSE, `mkfs.ext4`, `mount`. Needs root, /dev/fuse and /dev/loop-control.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kernel::*;
use common::*;

#[test]
fn reference_hello_world_mounts_read_only() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.v1.json");
    let result = dir.path().join("result");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"lowers":[{{"file":"{}"}}],"upper":{{}},"resultFile":"{}"}}"#,
            reference("hello-world-amd64-overlaybd-layer.tar").display(),
            result.display()
        ),
    )
    .unwrap();
    let a = Attach::start(&cfg, &dir.path().join("run"));
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "success");
    assert_eq!(
        std::fs::read_to_string(format!("/sys/class/block/{}/ro", a.device.file_name().unwrap().to_str().unwrap()))
            .unwrap()
            .trim(),
        "1"
    );
    {
        let m = Mount::new(&a.device, &dir.path().join("mnt"), true);
        let hello = std::fs::read(m.0.join("hello")).unwrap();
        assert_eq!(sha256(&hello), "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014");
    }
    a.stop();
}

/// A config of the reference hello-world layer in `dir`.
fn hello_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("config.v1.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"lowers":[{{"file":"{}"}}],"upper":{{}}}}"#,
            reference("hello-world-amd64-overlaybd-layer.tar").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn a_brief_holder_of_the_device_at_detach_does_not_fail_it() {
    require_root();
    // as udev probing a device its last writer closed: the kernel clears the loop device only
    // when the holder closes it, and only then lets go of the file on FUSE
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut a = Attach::start(&hello_config(dir.path()), &run_dir);
    let holder = std::fs::File::open(&a.device).unwrap();
    a.sigterm();
    // The holder closes once the detach is under way (the process cleared the device and closed
    // its own descriptor of it), so that the device is held at LOOP_CLR_FD and let go during the
    // release wait. The process cannot finish before: the holder keeps its FUSE mount busy.
    let (pid, device) = (a.pid(), a.device.clone());
    wait_until("overlaybd-attach closes the loop device", WAIT, || {
        assert!(!a.exited(), "overlaybd-attach exited while the device was held");
        !holds_open(pid, &device)
    });
    drop(holder);
    // exits 0 (every detach succeeded) and leaves no loop device or mount
    let status = a.wait_exit();
    assert!(status.success(), "overlaybd-attach exited with {status}");
    assert_nothing_left(&run_dir);
}

#[test]
fn a_device_held_past_the_release_wait_fails_its_detach_but_leaves_no_mount() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut a = Attach::start(&hello_config(dir.path()), &run_dir);
    let holder = std::fs::File::open(&a.device).unwrap();
    a.sigterm();
    let status = a.wait_exit();
    assert!(!status.success(), "the detach of a device still held open succeeded");
    // the FUSE mount is detached already; the loop device goes when its holder closes it
    let left = mounts_under(&run_dir);
    assert!(left.is_empty(), "mounts left behind: {left:?}");
    drop(holder);
    wait_nothing_left(&run_dir);
}

#[test]
fn a_config_that_cannot_open_reports_failure_in_the_result_file() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.v1.json");
    let result = dir.path().join("result");
    std::fs::write(
        &cfg,
        format!(r#"{{"lowers":[{{"file":"/nonexistent/layer"}}],"resultFile":"{}"}}"#, result.display()),
    )
    .unwrap();
    let out =
        Command::new(bin("overlaybd-attach")).arg("--run-dir").arg(dir.path().join("run")).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let r = std::fs::read_to_string(&result).unwrap();
    assert!(r.starts_with("failed:") && r.contains("/nonexistent/layer"), "{r}");
    assert_nothing_left(&dir.path().join("run"));
}

/// Files written into `root`: (relative path, content).
fn write_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut x = 0x1234_5678_9ABC_DEF1u64;
    for i in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = match i % 5 {
            0 => 0,
            1 => (x % 100) as usize,
            2 => (x % 70_000) as usize,
            3 => 4096,
            _ => (x % (3 << 20)) as usize,
        };
        let content: Vec<u8> = (0..size).map(|k| (k as u64 ^ x).wrapping_mul(0x9E37) as u8).collect();
        let rel = format!("d{}/f{i}", i % 7);
        std::fs::create_dir_all(root.join(format!("d{}", i % 7))).unwrap();
        std::fs::write(root.join(&rel), &content).unwrap();
        files.push((rel, content));
    }
    files
}

/// A new writable layer of `gib` GiB in `p` and a config with it as the upper: (data, index, config).
fn writable_config(p: &Path, gib: u32) -> (PathBuf, PathBuf, PathBuf) {
    let (data, index) = (p.join("writable_data"), p.join("writable_index"));
    run(Command::new(bin("overlaybd-create")).arg(&data).arg(&index).arg(gib.to_string()));
    let cfg = p.join("rw.json");
    std::fs::write(&cfg, format!(r#"{{"upper":{{"data":"{}","index":"{}"}}}}"#, data.display(), index.display()))
        .unwrap();
    (data, index, cfg)
}

#[test]
fn writable_device_mkfs_write_commit_and_read_back_as_a_lower() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let run_dir = p.join("run");
    let (data, index, cfg) = writable_config(p, 2);
    let a = Attach::start(&cfg, &run_dir);
    run(Command::new("mkfs.ext4").arg("-q").arg(&a.device));
    let files = {
        let m = Mount::new(&a.device, &p.join("mnt"), false);
        let files = write_files(&m.0);
        // a discard through the whole stack
        run(Command::new("fstrim").arg(&m.0));
        files
    };
    a.stop();
    let layer = p.join("layer.tar");
    run(Command::new(bin("overlaybd-commit")).args(["-z", "-t"]).arg(&data).arg(&index).arg(&layer));
    run(Command::new(bin("overlaybd-zfile")).arg("--verify").arg(&layer));
    let ro = p.join("ro.json");
    std::fs::write(&ro, format!(r#"{{"lowers":[{{"file":"{}"}}]}}"#, layer.display())).unwrap();
    let b = Attach::start(&ro, &run_dir);
    {
        let m = Mount::new(&b.device, &p.join("mnt2"), true);
        for (rel, content) in &files {
            let got = std::fs::read(m.0.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert!(&got == content, "{rel} differs");
        }
        let mut count = 0;
        for d in std::fs::read_dir(&m.0).unwrap() {
            let d = d.unwrap();
            if d.file_name() != "lost+found" {
                count += std::fs::read_dir(d.path()).unwrap().count();
            }
        }
        assert_eq!(count, files.len(), "exactly the written files");
    }
    b.stop();
}

#[test]
fn sigkill_during_writes_loses_no_fsynced_data_and_cleanup_leaves_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let run_dir = p.join("run");
    let (_, _, cfg) = writable_config(p, 1);
    let a = Attach::start(&cfg, &run_dir);
    run(Command::new("mkfs.ext4").arg("-q").arg(&a.device));
    let mnt = p.join("mnt");
    let m = Mount::new(&a.device, &mnt, false);
    let kept: Vec<u8> = (0..8 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("kept")).unwrap();
        f.write_all(&kept).unwrap();
        f.sync_all().unwrap();
        let d = std::fs::File::open(&mnt).unwrap();
        d.sync_all().unwrap();
    }
    // more writes in flight, then the server dies
    let mut writer = Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", mnt.join("unsynced").display()))
        .args(["bs=1M", "count=300", "status=none"])
        .spawn()
        .unwrap();
    // the server dies once the writer has written (or is done)
    let unsynced = mnt.join("unsynced");
    wait_until("dd writes", WAIT, || {
        std::fs::metadata(&unsynced).is_ok_and(|m| m.len() > 0) || writer.try_wait().unwrap().is_some()
    });
    a.kill();
    // (300 MiB of page cache onto a device that errors: slow on a loaded machine, so a wide bound)
    let _ = wait_timeout(&mut writer, 5 * WAIT).expect("a writer to a dead device must not hang");
    drop(m); // umount (lazy if the device errors)
             // the next start cleans up what the dead process left: its FUSE mount stays until then
    let out = run(Command::new(bin("overlaybd-attach")).arg("--cleanup").arg("--run-dir").arg(&run_dir));
    assert!(out.contains("unmounted"), "cleanup found nothing to do: {out}");
    // (a loop device still held by a lazily unmounted file system goes when that lets go)
    wait_nothing_left(&run_dir);
    // the upper reopens; the fsync'd file is intact
    let b = Attach::start(&cfg, &run_dir);
    {
        let m = Mount::new(&b.device, &p.join("mnt2"), false);
        assert!(std::fs::read(m.0.join("kept")).unwrap() == kept, "fsync'd data lost");
    }
    let fsck = Command::new("e2fsck").arg("-fn").arg(&b.device).output().unwrap();
    assert!(fsck.status.success(), "e2fsck after recovery: {}", String::from_utf8_lossy(&fsck.stdout));
    b.stop();
}

#[test]
fn io_beyond_the_end_and_on_a_vanished_layer_fails_cleanly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let layer = p.join("layer.tar");
    std::fs::copy(reference("hello-world-amd64-overlaybd-layer.tar"), &layer).unwrap();
    let cfg = p.join("c.json");
    std::fs::write(&cfg, format!(r#"{{"lowers":[{{"file":"{}"}}]}}"#, layer.display())).unwrap();
    let a = Attach::start(&cfg, &p.join("run"));
    // beyond the end: the kernel returns nothing, no error from us, no hang
    let dd = Command::new("dd")
        .arg(format!("if={}", a.device.display()))
        .args(["of=/dev/null", "bs=4096", "count=4", "iflag=direct", "skip=16777216"])
        .output()
        .unwrap();
    assert!(dd.status.success(), "{dd:?}");
    // the layer file is truncated underneath: reads of lost data give I/O errors, not hangs
    std::fs::OpenOptions::new().write(true).open(&layer).unwrap().set_len(4096).unwrap();
    let dd = Command::new("dd")
        .arg(format!("if={}", a.device.display()))
        .args(["of=/dev/null", "bs=1M", "count=8", "iflag=direct"])
        .output()
        .unwrap();
    assert!(!dd.status.success(), "reading a vanished layer succeeded");
    assert!(
        String::from_utf8_lossy(&dd.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&dd.stderr)
    );
    a.stop();
}
