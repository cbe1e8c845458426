//! Layer building against independent checks: two OCI layers (files, a hard link, a symlink, a
//! large file; then a whiteout, an opaque directory and a gzip layer) converted twice give the
//! same digests; the independent reader `obd_inspect.py` finds every block CRC valid and its
//! extraction of the stacked layers holds the right files (read with debugfs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use convertor::chain::chain_ids;
use convertor::image::{self, MediaTypes};
use convertor::layer::{build, file_digest, Built, Options};

fn inspect() -> Command {
    let mut c = Command::new("python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../backstore/tests/data/obd_inspect.py"));
    c
}

/// (path, file content, link target: "=path" for a hard link, else a symlink); neither: a dir.
type TarEntry<'a> = (&'a str, Option<&'a [u8]>, Option<&'a str>);

fn tar_of(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match (data, link) {
            (Some(d), _) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, path, *d).unwrap();
            }
            (None, Some(t)) if t.starts_with('=') => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, path, &t[1..]).unwrap();
            }
            (None, Some(t)) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, t).unwrap();
            }
            (None, None) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

struct Source {
    blobs: Vec<PathBuf>,
    diff_ids: Vec<String>,
    big: Vec<u8>,
}

fn source(dir: &Path) -> Source {
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let l1 = tar_of(&[
        ("etc", None, None),
        ("etc/keep", Some(b"keep\n"), None),
        ("etc/gone", Some(b"gone\n"), None),
        ("etc/hard", None, Some("=etc/keep")),
        ("etc/link", None, Some("keep")),
        ("opq", None, None),
        ("opq/old", Some(b"old\n"), None),
        ("data", None, None),
        ("data/big", Some(&big), None),
    ]);
    let l2 = tar_of(&[
        ("etc/.wh.gone", Some(b""), None),
        ("etc/new", Some(b"second\n"), None),
        ("opq/.wh..wh..opq", Some(b""), None),
        ("opq/fresh", Some(b"fresh\n"), None),
    ]);
    let p1 = dir.join("l1.tar");
    std::fs::write(&p1, &l1).unwrap();
    let p2 = dir.join("l2.tar.gz");
    let mut gz = flate2_gz();
    gz.write_all(&l2).unwrap();
    std::fs::write(&p2, gz.finish().unwrap()).unwrap();
    Source { blobs: vec![p1, p2], diff_ids: vec![sha(&l1), sha(&l2)], big }
}

fn flate2_gz() -> flate2::write::GzEncoder<Vec<u8>> {
    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())
}

fn convert(src: &Source, work: &Path) -> Vec<Built> {
    let chains = chain_ids(&src.diff_ids);
    let mut built: Vec<Built> = Vec::new();
    for (i, (blob, diff)) in src.blobs.iter().zip(&src.diff_ids).enumerate() {
        let lowers: Vec<PathBuf> = built.iter().map(|b| b.file.clone()).collect();
        let b = build(&work.join(format!("{i:04}")), i, blob, diff, &chains, &lowers, &Options::default()).unwrap();
        built.push(b);
    }
    built
}

#[test]
fn layers_are_reproducible_valid_and_hold_the_files() {
    let t = tempfile::tempdir().unwrap();
    let src = source(t.path());
    let a = convert(&src, &t.path().join("a"));
    let b = convert(&src, &t.path().join("b"));
    let da: Vec<&str> = a.iter().map(|l| l.digest.as_str()).collect();
    let db: Vec<&str> = b.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(da, db, "converting twice gave different digests");
    for l in &a {
        assert_eq!(file_digest(&l.file).unwrap(), (l.digest.clone(), l.size));
        let out = inspect().arg("info").arg(&l.file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "obd_inspect info {}: {text}", l.file.display());
        assert!(text.contains("block CRC failures: 0") && text.contains("crc_ok=True"), "{text}");
        assert!(text.contains("digest_ok=True"), "{text}");
    }
    // the layer UUIDs are the chain IDs', so a rebuild anywhere gives the same bytes
    let chains = chain_ids(&src.diff_ids);
    for (l, c) in a.iter().zip(&chains) {
        let text =
            String::from_utf8_lossy(&inspect().arg("info").arg("--no-crc").arg(&l.file).output().unwrap().stdout)
                .to_string();
        let uuid = convertor::chain::layer_uuid(c).unwrap().to_uppercase();
        assert!(text.contains(&format!("uuid {uuid}")), "{uuid} not in {text}");
    }
    // the independent reader's image of the two layers stacked
    let img = t.path().join("disk.img");
    let out = inspect().arg("extract").arg("--lower").arg(&a[0].file).arg(&a[1].file).arg(&img).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cat = |p: &str| {
        let o = Command::new("debugfs").args(["-R", &format!("cat {p}")]).arg(&img).output().unwrap();
        o.stdout
    };
    let ls = |p: &str| {
        let o = Command::new("debugfs").args(["-R", &format!("ls -p {p}")]).arg(&img).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(cat("/etc/keep"), b"keep\n");
    assert_eq!(cat("/etc/hard"), b"keep\n");
    assert_eq!(cat("/etc/new"), b"second\n");
    assert!(cat("/data/big") == src.big, "the large file differs");
    assert!(!ls("/etc").contains("/gone/"), "the whiteout did not remove /etc/gone: {}", ls("/etc"));
    assert!(!ls("/opq").contains("/old/") && ls("/opq").contains("/fresh/"), "{}", ls("/opq"));
    // the image documents
    let cfg = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        src.diff_ids[0], src.diff_ids[1]
    );
    assert_eq!(image::diff_ids(cfg.as_bytes()).unwrap(), src.diff_ids);
    let new_cfg = image::config(cfg.as_bytes(), &a).unwrap();
    let m =
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{},{}]}"#;
    let new_m = image::manifest(m.as_bytes(), &new_cfg, &a, MediaTypes { oci: true }).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&new_m).unwrap();
    assert_eq!(v["layers"][1]["digest"], a[1].digest);
    assert_eq!(v["layers"][1]["annotations"]["containerd.io/snapshot/overlaybd/blob-digest"], a[1].digest);
}

#[test]
fn a_wrong_diff_id_or_a_corrupt_layer_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = source(t.path());
    let chains = chain_ids(&src.diff_ids);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let e = build(&t.path().join("w"), 0, &src.blobs[0], &wrong, &chains, &[], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    let cut = t.path().join("cut.tar.gz");
    let bytes = std::fs::read(&src.blobs[1]).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let l0 =
        build(&t.path().join("ok"), 0, &src.blobs[0], &src.diff_ids[0], &chains, &[], &Options::default()).unwrap();
    let e =
        build(&t.path().join("c"), 1, &cut, &src.diff_ids[1], &chains, &[l0.file], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("layer 1"), "{e}");
}
