//! Image conversion with real parts: `overlaybd-convertor` registry to registry against Debian's
//! `docker-registry` (reproducible digests, layers the independent reader `obd_inspect.py`
//! finds valid, indexes, dedup, bad input), and the round trip through `ctr-obd rpull`,
//! containerd, runc and this snapshotter. These tests live here because they share the
//! snapshotter's end-to-end fixtures (`common/`).

#[allow(unused_imports)]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn convertor(args: &[&str]) -> Output {
    output(Command::new(workspace_bin("overlaybd-convertor")).args(args))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `skopeo inspect --raw` of `reference`: its bytes, or None when the registry does not have it.
fn raw_bytes(reference: &str) -> Option<Vec<u8>> {
    let o = output(
        Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{reference}")),
    );
    o.status.success().then_some(o.stdout)
}

/// The same, parsed.
fn raw(reference: &str) -> Option<Value> {
    raw_bytes(reference).map(|b| serde_json::from_slice(&b).unwrap())
}

/// A blob of `repo` on the registry, saved into `dir`.
fn fetch_blob(reg: &Registry, repo: &str, digest: &str, dir: &Path) -> PathBuf {
    let p = dir.join(digest.trim_start_matches("sha256:"));
    run(Command::new("curl")
        .args(["-sSfL", "-o"])
        .arg(&p)
        .arg(format!("http://{}/v2/{repo}/blobs/{digest}", reg.host)));
    p
}

fn inspect_ok(blob: &Path) {
    let o = output(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../backstore/tests/data/obd_inspect.py"))
            .arg("info")
            .arg(blob),
    );
    let t = text(&o);
    assert!(o.status.success(), "obd_inspect info {}: {t}", blob.display());
    assert!(t.contains("block CRC failures: 0") && t.contains("crc_ok=True") && t.contains("digest_ok=True"), "{t}");
}

/// Checks a converted manifest: overlaybd layers whose digests are the config's diff IDs, each
/// valid for the independent reader.
fn check_converted(reg: &Registry, repo: &str, m: &Value, oci: bool, dir: &Path) {
    let layer_type =
        if oci { "application/vnd.oci.image.layer.v1.tar" } else { "application/vnd.docker.image.rootfs.diff.tar" };
    let cfg_digest = m["config"]["digest"].as_str().unwrap();
    let cfg: Value = serde_json::from_slice(&std::fs::read(fetch_blob(reg, repo, cfg_digest, dir)).unwrap()).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), layers.len());
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["mediaType"], layer_type, "{m}");
        assert_eq!(l["annotations"]["containerd.io/snapshot/overlaybd/blob-digest"], l["digest"]);
        assert_eq!(l["annotations"]["containerd.io/snapshot/overlaybd/blob-size"], l["size"].to_string());
        assert_eq!(l["annotations"]["containerd.io/snapshot/overlaybd/version"], "0.1.0");
        assert_eq!(cfg["rootfs"]["diff_ids"][i], l["digest"]);
        inspect_ok(&fetch_blob(reg, repo, l["digest"].as_str().unwrap(), dir));
    }
}

fn digest_line(o: &Output) -> String {
    assert!(o.status.success(), "overlaybd-convertor failed: {}", text(o));
    String::from_utf8_lossy(&o.stdout).split_whitespace().last().unwrap().to_string()
}

#[test]
fn the_convertor_converts_registry_to_registry_reproducibly_with_indexes_and_dedup() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let (layout, _) = busybox_image(&t.path().join("bb"));
    reg.push(&layout.dir, "latest", "test/bb");
    let repo = format!("{}/test/bb", reg.host);
    let work = t.path().join("work");
    let w = work.to_str().unwrap();
    let conv = |extra: &[&str]| {
        let mut a = vec!["-r", &repo, "-i", "latest", "--plain", "-d", w];
        a.extend_from_slice(extra);
        convertor(&a)
    };
    // Docker media types by default, then OCI ones with --referrer
    let d1 = digest_line(&conv(&["-o", "obd", "--db-type", "none"]));
    let m = raw(&format!("{repo}:obd")).expect("the converted image is in the registry");
    assert_eq!(m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(format!("sha256:{}", sha256(&raw_bytes(&format!("{repo}:obd")).unwrap())), d1);
    check_converted(&reg, "test/bb", &m, false, t.path());
    assert!(!work.read_dir().unwrap().any(|e| e.unwrap().path().is_dir()), "the work dir was not cleaned");
    // converting again, without the store, gives the same digests
    assert_eq!(digest_line(&conv(&["-o", "obd2", "--db-type", "none"])), d1);
    // with the store: the second conversion reuses the first's manifest (nothing built)
    let db = t.path().join("dedup.redb");
    let db = db.to_str().unwrap();
    assert_eq!(digest_line(&conv(&["-o", "obd3", "--db-str", db])), d1);
    let again = conv(&["-o", "obd4", "--db-str", db, "--verbose"]);
    eprintln!("{}", text(&again));
    assert_eq!(digest_line(&again), d1);
    assert!(text(&again).contains("manifest converted before") && !text(&again).contains("built"), "{}", text(&again));
    assert_eq!(raw(&format!("{repo}:obd4")).unwrap(), m);
    // --referrer: OCI types, subject = the source manifest
    let src = raw_bytes(&format!("{repo}:latest")).unwrap();
    let dr = digest_line(&conv(&["-o", "ref", "--referrer", "--db-type", "none"]));
    assert_ne!(dr, d1);
    let r = raw(&format!("{repo}:ref")).unwrap();
    assert_eq!(r["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(r["artifactType"], "application/vnd.containerd.overlaybd.native.v1+json");
    assert_eq!(r["subject"]["digest"], format!("sha256:{}", sha256(&src)));
    check_converted(&reg, "test/bb", &r, true, t.path());

    // a multi-platform index with an attestation manifest: every platform converted, the
    // attestation dropped, platforms kept
    let idx_layout = multi_platform(&t.path().join("multi"));
    run(Command::new("skopeo")
        .args(["copy", "-q", "--all", "--dest-tls-verify=false", "--preserve-digests"])
        .arg(format!("oci:{}:multi", idx_layout.display()))
        .arg(format!("docker://{}/test/multi:latest", reg.host)));
    let mrepo = format!("{}/test/multi", reg.host);
    // (no store: its layers would be mounted from test/bb, converted above)
    let o = convertor(&["-r", &mrepo, "-i", "latest", "-o", "obd", "--plain", "-d", w, "--oci", "--db-type", "none"]);
    digest_line(&o);
    let idx = raw(&format!("{mrepo}:obd")).unwrap();
    assert_eq!(idx["mediaType"], "application/vnd.oci.image.index.v1+json");
    let entries = idx["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{idx}");
    assert_eq!(entries[0]["platform"]["architecture"], "amd64");
    assert_eq!(entries[1]["platform"]["architecture"], "arm64");
    for e in entries {
        assert_eq!(e["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        let m = raw(&format!("{mrepo}@{}", e["digest"].as_str().unwrap())).unwrap();
        check_converted(&reg, "test/multi", &m, true, t.path());
    }
    // both platforms share their layers: built once for both
    assert_eq!(text(&o).matches(" built ").count(), 2, "{}", text(&o));
    // another repository with the same layers mounts the blobs converted for the first one
    reg.push(&layout.dir, "latest", "test/other");
    let orepo = format!("{}/test/other", reg.host);
    let o = convertor(&["-r", &orepo, "-i", "latest", "-o", "obd", "--plain", "-d", w, "--db-str", db]);
    assert_eq!(digest_line(&o), d1);
    assert_eq!(text(&o).matches("layer mounted from another repository").count(), 2, "{}", text(&o));
    assert!(!text(&o).contains(" built "), "{}", text(&o));
    check_converted(&reg, "test/other", &raw(&format!("{orepo}:obd")).unwrap(), false, t.path());
}

/// An OCI layout tagged `multi` whose index lists an amd64 and an arm64 image (same busybox
/// layer, different configs) and a BuildKit attestation manifest.
fn multi_platform(dir: &Path) -> PathBuf {
    let (o, _) = busybox_image(dir);
    let index: Value = serde_json::from_slice(&std::fs::read(o.dir.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let m: Value = serde_json::from_slice(&std::fs::read(o.dir.join("blobs/sha256").join(&md)).unwrap()).unwrap();
    let cd = m["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let cfg: Value = serde_json::from_slice(&std::fs::read(o.dir.join("blobs/sha256").join(&cd)).unwrap()).unwrap();
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut c = cfg.clone();
        c["architecture"] = arch.into();
        let cb = serde_json::to_vec(&c).unwrap();
        let mut mm = m.clone();
        mm["config"]["digest"] = o.blob(&cb).into();
        mm["config"]["size"] = cb.len().into();
        let mb = serde_json::to_vec(&mm).unwrap();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": o.blob(&mb), "size": mb.len(),
            "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let att_cfg = o.blob(b"{}");
    let statement = br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#;
    let att_layer = o.blob(statement);
    let att = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": att_cfg, "size": 2},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": att_layer, "size": statement.len()}]
    }))
    .unwrap();
    entries.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": o.blob(&att), "size": att.len(),
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": entries[0]["digest"].clone()}
    }));
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries
    }))
    .unwrap();
    let id = o.blob(&idx);
    std::fs::write(
        o.dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": idx.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
        .unwrap(),
    )
    .unwrap();
    o.dir.clone()
}

/// Replaces the first layer of the layout's image with `blob` (declared with `media_type` and
/// `diff_id`), as `tag`.
fn with_layer(dir: &Path, tag: &str, blob: &[u8], media_type: &str, diff_id: Option<&str>) -> PathBuf {
    let (o, _) = busybox_image(dir);
    let index: Value = serde_json::from_slice(&std::fs::read(o.dir.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let mut m: Value = serde_json::from_slice(&std::fs::read(o.dir.join("blobs/sha256").join(&md)).unwrap()).unwrap();
    let cd = m["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(o.dir.join("blobs/sha256").join(&cd)).unwrap()).unwrap();
    m["layers"][0] = serde_json::json!({"mediaType": media_type, "digest": o.blob(blob), "size": blob.len()});
    if let Some(d) = diff_id {
        cfg["rootfs"]["diff_ids"][0] = d.into();
    }
    let cb = serde_json::to_vec(&cfg).unwrap();
    m["config"]["digest"] = o.blob(&cb).into();
    m["config"]["size"] = cb.len().into();
    o.index(&serde_json::to_string(&m).unwrap(), tag);
    o.dir.clone()
}

#[test]
fn bad_input_gives_a_clear_error_and_pushes_no_image() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let work = t.path().join("work");
    let w = work.to_str().unwrap();
    let (layout, _) = busybox_image(&t.path().join("bb"));
    let index: Value = serde_json::from_slice(&std::fs::read(layout.dir.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let m: Value = serde_json::from_slice(&std::fs::read(layout.dir.join("blobs/sha256").join(&md)).unwrap()).unwrap();
    let good = std::fs::read(
        layout.dir.join("blobs/sha256").join(m["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:")),
    )
    .unwrap();
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let truncated = good[..good.len() / 3].to_vec();
    let wrong_diff = format!("sha256:{}", "0".repeat(64));
    let gz_type = "application/vnd.oci.image.layer.v1.tar+gzip";
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("corrupt", with_layer(&t.path().join("c"), "corrupt", &corrupt, gz_type, None), "layer 0"),
        ("truncated", with_layer(&t.path().join("t"), "truncated", &truncated, gz_type, None), "layer 0"),
        ("wrongdiff", with_layer(&t.path().join("d"), "wrongdiff", &good, gz_type, Some(&wrong_diff)), "layer 0"),
        (
            "mediatype",
            with_layer(&t.path().join("m"), "mediatype", &good, "application/vnd.example.layer", None),
            "unsupported media type",
        ),
    ];
    for (tag, dir, want) in &cases {
        reg.push(dir, tag, "test/bad");
        let repo = format!("{}/test/bad", reg.host);
        let o =
            convertor(&["-r", &repo, "-i", tag, "-o", &format!("{tag}-obd"), "--plain", "-d", w, "--db-type", "none"]);
        let msg = text(&o);
        eprintln!("{tag}: {msg}");
        assert_eq!(o.status.code(), Some(1), "{tag}: {msg}");
        assert!(msg.contains(want), "{tag}: the error does not say {want:?}: {msg}");
        assert!(msg.lines().count() < 6, "{tag}: not one clear error: {msg}");
        assert!(raw(&format!("{repo}:{tag}-obd")).is_none(), "{tag}: an image was pushed");
        assert!(!work.read_dir().unwrap().any(|e| e.unwrap().path().is_dir()), "{tag}: the work dir was not cleaned");
    }
    // a missing tag, an unreachable registry, a source that is already overlaybd
    let repo = format!("{}/test/bad", reg.host);
    let o = convertor(&["-r", &repo, "-i", "nosuchtag", "-o", "x", "--plain", "-d", w, "--db-type", "none"]);
    assert!(text(&o).contains("nosuchtag") && o.status.code() == Some(1), "{}", text(&o));
    let dead = format!("127.0.0.1:{}/test/bb", free_port());
    let o = convertor(&["-r", &dead, "-i", "latest", "-o", "x", "--plain", "-d", w, "--db-type", "none"]);
    assert!(text(&o).contains("registry") && o.status.code() == Some(1), "{}", text(&o));
    let (obd, _) = busybox_overlaybd_image(&t.path().join("obd"), "obd");
    reg.push(&obd.dir, "obd", "test/bad");
    let o = convertor(&["-r", &repo, "-i", "obd", "-o", "obd2", "--plain", "-d", w, "--db-type", "none"]);
    assert!(text(&o).contains("already an overlaybd layer") && o.status.code() == Some(1), "{}", text(&o));
    // an unsupported flag is refused before anything happens
    let o = convertor(&["-r", &repo, "-i", "latest", "--turboOCI", "x", "--plain"]);
    assert!(text(&o).contains("TurboOCI") && o.status.code() == Some(1), "{}", text(&o));
    let _ = std::io::stdout().flush();
}

/// A member of the round trip's layers.
enum Member {
    Dir(&'static str, u32),
    File(&'static str, Vec<u8>, u32, (u64, u64)),
    HardLink(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Char(&'static str, u32, u32),
    Block(&'static str, u32, u32),
    Fifo(&'static str),
    /// PAX `SCHILY.xattr.*` records, then the member.
    Xattrs(Vec<(&'static str, Vec<u8>)>, Box<Member>),
}

/// A gzip layer of `members` in `o`: (descriptor JSON, diff ID).
fn rich_layer(o: &OciLayout, members: Vec<Member>) -> (String, String) {
    fn add(b: &mut tar::Builder<Vec<u8>>, m: Member) {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_650_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        match m {
            Member::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Member::File(p, data, mode, (uid, gid)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode);
                h.set_uid(uid);
                h.set_gid(gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_slice()).unwrap();
            }
            Member::HardLink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                b.append_link(&mut h, p, target).unwrap();
            }
            Member::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target).unwrap();
            }
            Member::Char(p, major, minor) | Member::Block(p, major, minor) => {
                let char = matches!(m, Member::Char(..));
                h.set_entry_type(if char { tar::EntryType::Char } else { tar::EntryType::Block });
                h.set_mode(0o600);
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Member::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o640);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Member::Xattrs(x, inner) => {
                let keys: Vec<String> = x.iter().map(|(k, _)| format!("SCHILY.xattr.{k}")).collect();
                b.append_pax_extensions(keys.iter().zip(&x).map(|(k, (_, v))| (k.as_str(), v.as_slice()))).unwrap();
                add(b, *inner);
            }
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        add(&mut b, m);
    }
    let tar = b.into_inner().unwrap();
    let diff = format!("sha256:{}", sha256(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let d = o.blob(&gz);
    (
        format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#, gz.len()),
        diff,
    )
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A three-layer image exercising what a layer can hold: whiteouts of files and directories,
/// an opaque directory, hard links, symlinks, xattrs (user and file
/// capabilities), device nodes and a FIFO, owners and special modes, a large file, a sparse
/// one and a long name.
fn rich_image(dir: &Path) -> PathBuf {
    let o = OciLayout::new(dir);
    let mut base: Vec<Member> = vec![Member::Dir("bin", 0o755), Member::Dir("etc", 0o755), Member::Dir("tmp", 0o1777)];
    for d in ["proc", "sys", "dev"] {
        base.push(Member::Dir(d, 0o755));
    }
    base.push(Member::File("bin/busybox", std::fs::read("/bin/busybox").unwrap(), 0o755, (0, 0)));
    for a in ["sh", "sleep", "cat"] {
        base.push(Member::Symlink(Box::leak(format!("bin/{a}").into_boxed_str()), "busybox"));
    }
    let l1 = rich_layer(&o, base);
    let mut sparse = vec![0u8; 48 << 20];
    sparse[..4096].copy_from_slice(&pseudo_random(4096, 7));
    let end = sparse.len() - 10;
    sparse[end..].copy_from_slice(b"sparse-end");
    let cap = [1u8, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // v2, CAP_NET_BIND_SERVICE
    let l2 = rich_layer(
        &o,
        vec![
            Member::Dir("data", 0o755),
            Member::File("data/keep", b"keep\n".to_vec(), 0o644, (0, 0)),
            Member::File("data/gone", b"gone\n".to_vec(), 0o644, (0, 0)),
            Member::Dir("data/gone-dir", 0o755),
            Member::File("data/gone-dir/f", b"f\n".to_vec(), 0o644, (0, 0)),
            Member::Dir("data/opaque", 0o750),
            Member::File("data/opaque/a", b"a\n".to_vec(), 0o644, (0, 0)),
            Member::File("data/opaque/b", b"b\n".to_vec(), 0o644, (0, 0)),
            Member::File("data/owned", b"owned\n".to_vec(), 0o640, (1000, 2000)),
            Member::File("data/setuid", b"#!/bin/sh\n".to_vec(), 0o4755, (0, 0)),
            Member::Dir("data/sticky", 0o1777),
            Member::File("data/big", pseudo_random(9 << 20, 3), 0o644, (0, 0)),
            Member::File("data/sparse", sparse, 0o600, (0, 0)),
            Member::File("data/empty", Vec::new(), 0o444, (0, 0)),
            Member::File("data/hard1", b"linked\n".to_vec(), 0o644, (0, 0)),
            Member::HardLink("data/hard2", "data/hard1"),
            Member::Symlink("data/sym", "../data/keep"),
            Member::Symlink("data/dangling", "/nowhere/at/all"),
            Member::Char("data/chr", 1, 3),
            Member::Block("data/blk", 7, 0),
            Member::Fifo("data/fifo"),
            Member::Xattrs(
                vec![("user.test", b"hello".to_vec()), ("security.capability", cap.to_vec())],
                Box::new(Member::File("data/xattr", b"x\n".to_vec(), 0o755, (0, 0))),
            ),
            Member::Xattrs(vec![("user.dir", b"d".to_vec())], Box::new(Member::Dir("data/xdir", 0o700))),
            Member::File(
                "data/a-rather-long-directory-name-for-the-ustar-limit/and-an-even-longer-file-name-beyond-one-hundred-bytes-ñ",
                b"long\n".to_vec(),
                0o644,
                (0, 0),
            ),
        ],
    );
    let l3 = rich_layer(
        &o,
        vec![
            Member::File("data/.wh.gone", Vec::new(), 0o644, (0, 0)),
            Member::File("data/.wh.gone-dir", Vec::new(), 0o644, (0, 0)),
            Member::Dir("data/opaque", 0o750),
            Member::File("data/opaque/.wh..wh..opq", Vec::new(), 0o644, (0, 0)),
            Member::File("data/opaque/c", b"c\n".to_vec(), 0o644, (0, 0)),
            Member::File("data/owned", b"owned again\n".to_vec(), 0o600, (1001, 1001)),
            // (containerd refuses hard links to a lower layer's file, as Docker never makes them)
            Member::File("data/hard3", b"linked in layer 3\n".to_vec(), 0o600, (0, 0)),
            Member::HardLink("data/hard4", "data/hard3"),
            Member::File("data/new", b"new\n".to_vec(), 0o644, (0, 0)),
        ],
    );
    o.finish(&[l1, l2, l3], "latest", &["/bin/sh"]);
    o.dir.clone()
}

/// What a running container's root holds, walked from the host through `/proc/PID/root`: per
/// path its type and mode, owner, size (not for directories), hard-link group, link target,
/// device numbers, xattrs and content digest; the container's own mounts are left out.
fn container_tree(ctrd: &Containerd, image: &str, id: &str, snapshotter: &str) -> String {
    ctrd.ctr(&["run", "-d", "--snapshotter", snapshotter, image, id, "/bin/sleep", "600"]);
    let tasks = ctrd.ctr(&["task", "ls"]);
    let pid = tasks
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no task {id}: {tasks}"))
        .to_string();
    let script = r#"
import hashlib, os, stat, sys
root = "/proc/%s/root" % sys.argv[1]
mounts = set()
for l in open("/proc/%s/mountinfo" % sys.argv[1]):
    mp = l.split()[4]
    if mp != "/":
        mounts.add(mp)
groups, out = {}, []
for d, dirs, files in os.walk(root):
    rel = d[len(root):] or "/"
    dirs[:] = sorted(x for x in dirs if os.path.join(rel, x) not in mounts)
    for name in sorted(dirs + files):
        p, r = os.path.join(d, name), os.path.join(rel, name)
        if r in mounts:
            continue
        st = os.lstat(p)
        f = [r, "%o" % st.st_mode, "%d:%d" % (st.st_uid, st.st_gid)]
        if not stat.S_ISDIR(st.st_mode):
            f.append("size=%d" % st.st_size)
            key = (st.st_dev, st.st_ino)
            f.append("group=" + groups.setdefault(key, r) + " nlink=%d" % st.st_nlink)
        if stat.S_ISLNK(st.st_mode):
            f.append("-> " + os.readlink(p))
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            f.append("dev=%d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)))
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            f.append(h.hexdigest())
        if not stat.S_ISLNK(st.st_mode):
            for k in sorted(os.listxattr(p, follow_symlinks=False)):
                f.append("%s=%s" % (k, os.getxattr(p, k, follow_symlinks=False).hex()))
        out.append(" ".join(f))
print("\n".join(out))
"#;
    let tree = run(Command::new("python3").arg("-c").arg(script).arg(&pid));
    let _ = ctrd.ctr_output(&["task", "kill", "-s", "KILL", id]);
    // (the task can be removed once it has exited)
    wait_for(
        120,
        || ctrd.ctr_output(&["task", "rm", id]).status.success(),
        || format!("the task {id} does not go: {}", ctrd.log_tail()),
    );
    ctrd.ctr(&["container", "rm", id]);
    tree
}

#[test]
fn a_converted_image_rpulled_lazily_shows_what_the_original_shows() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = rich_image(&t.path().join("rich"));
    let src = reg.push(&layout, "latest", "test/rich");
    let repo = format!("{}/test/rich", reg.host);
    let w = t.path().join("work");
    digest_line(&convertor(&[
        "-r",
        &repo,
        "-i",
        "latest",
        "-o",
        "obd",
        "--plain",
        "-d",
        w.to_str().unwrap(),
        "--db-type",
        "none",
    ]));
    // no mirror entry: the snapshotter reaches the plain loopback registry by itself
    let cache = t.path().join("cache");
    let snap = Snapshotter::start(t.path(), &cache_toml(&cache));
    let ctrd = Containerd::start(t.path(), &snap.socket, "obdconv");
    // the original through containerd's own overlayfs snapshotter
    ctrd.ctr(&["image", "pull", "--plain-http", &src]);
    let want = container_tree(&ctrd, &src, "orig", "overlayfs");
    // the converted one, rpulled (no layer data) through a proxy that records each request
    // before forwarding it, and run lazily through ours
    let layers: Vec<(String, u64)> = raw(&format!("{repo}:obd")).unwrap()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["digest"].as_str().unwrap().to_string(), l["size"].as_u64().unwrap()))
        .collect();
    let proxy = Proxy::start(&reg.host);
    let obd = format!("{}/test/rich:obd", proxy.host);
    let o = output(Command::new(workspace_bin("ctr-obd")).args([
        "-a",
        ctrd.socket.to_str().unwrap(),
        "-n",
        "obdconv",
        "rpull",
        "--plain-http",
        &obd,
    ]));
    assert!(o.status.success(), "ctr-obd rpull: {}", text(&o));
    // rpull asked for no layer blob (it has returned: its requests were recorded) ...
    let reqs = proxy.requests();
    let rpull_gets: Vec<&ProxyRequest> = reqs
        .iter()
        .filter(|r| !r.user_agent.starts_with(SNAPSHOTTER_AGENT) && layers.iter().any(|(d, _)| r.path.ends_with(d)))
        .collect();
    assert!(rpull_gets.is_empty(), "rpull fetched layer blobs: {rpull_gets:#?}");
    // ... and the snapshotter only each layer's metadata, in the background (prefetchOnPull):
    // once it logged that each is done, all its requests were recorded
    let done = snap.wait_for_log_lines(&["layer metadata", "at pull"], layers.len());
    assert!(done.iter().all(|l| l.contains("layer metadata fetched at pull")), "{done:#?}\n{}", snap.log_text());
    let reqs = proxy.requests();
    for (digest, size) in &layers {
        assert_only_metadata_fetched(&reqs, digest, *size, &cache);
    }
    let got = container_tree(&ctrd, &obd, "conv", "overlaybd");
    for must in [
        "/data/opaque/c",
        "/data/xattr",
        "user.test=68656c6c6f",
        "security.capability=",
        "/data/chr 20600",
        "/data/hard3",
        "-> ../data/keep",
        "/data/owned 100600 1001:1001",
    ] {
        assert!(want.contains(must), "the original lacks {must:?}: {want}");
    }
    for gone in ["/data/gone ", "/data/gone-dir", "/data/opaque/a"] {
        assert!(!want.contains(gone), "the original shows {gone:?}");
    }
    // ext4's lost+found is in every overlaybd image (the reference's too)
    let got: String = got.lines().filter(|l| !l.starts_with("/lost+found ")).map(|l| format!("{l}\n")).collect();
    let want: String = want.lines().map(|l| format!("{l}\n")).collect();
    if want != got {
        let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
        let only_w: Vec<&&str> = w.iter().filter(|l| !g.contains(l)).collect();
        let only_g: Vec<&&str> = g.iter().filter(|l| !w.contains(l)).collect();
        panic!("the converted image differs:\n only in the original: {only_w:#?}\n only in the converted: {only_g:#?}");
    }
    ctrd.ctr(&["image", "rm", &obd, &src]);
    drop(ctrd);
    drop(snap);
}

/// A private MariaDB server (Debian's `mariadbd`) on 127.0.0.1, any user let in, database `obd`.
struct Mariadb {
    child: std::process::Child,
    dir: tempfile::TempDir,
    /// `root@tcp(127.0.0.1:PORT)/obd`, as the reference's `--db-str` takes it.
    dsn: String,
}

impl Mariadb {
    fn start() -> Mariadb {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("data");
        run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db", "--user=root"]));
        let port = free_port();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("err.log").display()))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(std::fs::File::create(d.join("stdout.log")).unwrap()))
            .stderr(std::process::Stdio::from(std::fs::File::create(d.join("stderr.log")).unwrap()))
            .spawn()
            .expect("start mariadbd");
        let mut m = Mariadb { child, dir, dsn: format!("root@tcp(127.0.0.1:{port})/obd") };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while m.sql("SELECT 1").is_none() {
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("mariadbd exited ({st}): {}", m.log());
            }
            assert!(std::time::Instant::now() < end, "mariadbd does not answer (waited 120 s): {}", m.log());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        m.sql("CREATE DATABASE obd").expect("create the database");
        m
    }

    /// Its error log.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default()
    }

    /// Runs SQL; its output (tab-separated, no headers), or None when it failed.
    fn sql(&self, q: &str) -> Option<String> {
        let o = output(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.dir.path().join("sock").display()))
                .args(["-N", "-B", "-e", q]),
        );
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_fleet_of_convertors_shares_conversions_through_the_reference_mysql_tables() {
    require_real_parts();
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let db = Mariadb::start();
    let (layout, _) = busybox_image(&t.path().join("bb"));
    reg.push(&layout.dir, "latest", "test/bb");
    reg.push(&layout.dir, "latest", "test/other");
    // each member of the fleet with a work dir of its own, one database
    let conv = |member: &str, repo: &str, extra: &[&str]| {
        let w = t.path().join(member);
        let r = format!("{}/{repo}", reg.host);
        let mut a = vec!["-r", r.as_str(), "-i", "latest", "--plain", "-d", w.to_str().unwrap()];
        a.extend_from_slice(&["--db-type", "mysql", "--db-str", &db.dsn]);
        a.extend_from_slice(extra);
        convertor(&a)
    };
    let first = conv("a", "test/bb", &["-o", "obd"]);
    let d1 = digest_line(&first);
    assert_eq!(text(&first).matches(" built ").count(), 2, "{}", text(&first));
    // another member: the manifest converted before is re-tagged, nothing built
    let second = conv("b", "test/bb", &["-o", "obd2"]);
    assert_eq!(digest_line(&second), d1);
    assert!(
        text(&second).contains("manifest converted before") && !text(&second).contains(" built "),
        "{}",
        text(&second)
    );
    // another repository: the layers are mounted from the first
    let third = conv("c", "test/other", &["-o", "obd"]);
    assert_eq!(digest_line(&third), d1);
    assert_eq!(text(&third).matches("layer mounted from another repository").count(), 2, "{}", text(&third));
    check_converted(&reg, "test/other", &raw(&format!("{}/test/other:obd", reg.host)).unwrap(), false, t.path());
    // the reference's tables, keyed as the reference keys them (default settings)
    let layers = db.sql("SELECT repo, chain_id, data_digest FROM obd.overlaybd_layers ORDER BY repo").unwrap();
    assert_eq!(layers.lines().count(), 4, "{layers}");
    assert!(layers.lines().all(|l| l.split('\t').nth(1).is_some_and(|c| c.len() == 71)), "{layers}");
    let manifests = db.sql("SELECT repo, out_digest, mediatype FROM obd.overlaybd_manifests ORDER BY repo").unwrap();
    assert_eq!(manifests.lines().count(), 2, "{manifests}");
    assert!(manifests.contains(&d1) && manifests.contains("application/vnd.docker.distribution.manifest.v2+json"));
    // other settings are other blobs: built again, keyed apart
    let zstd = conv("d", "test/bb", &["-o", "zstd", "--algorithm", "zstd"]);
    assert_ne!(digest_line(&zstd), d1);
    assert_eq!(text(&zstd).matches(" built ").count(), 2, "{}", text(&zstd));
    assert_eq!(
        db.sql("SELECT count(*) FROM obd.overlaybd_layers WHERE chain_id LIKE '%;alg=zstd%'").unwrap().trim(),
        "2"
    );
    // a database that is not there: a clear error, nothing pushed
    let dead = format!("root@tcp(127.0.0.1:{})/obd", free_port());
    let w = t.path().join("e");
    let r = format!("{}/test/bb", reg.host);
    let o = convertor(&[
        "-r",
        &r,
        "-i",
        "latest",
        "-o",
        "nodb",
        "--plain",
        "-d",
        w.to_str().unwrap(),
        "--db-type",
        "mysql",
        "--db-str",
        &dead,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("mysql 127.0.0.1") && text(&o).lines().count() < 4, "{}", text(&o));
    assert!(raw(&format!("{r}:nodb")).is_none());
}
