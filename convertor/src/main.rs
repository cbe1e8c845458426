//! `overlaybd-convertor`: converts an OCI or Docker image in a registry into an overlaybd image
//! in the same repository, in user space (no root, no devices), with the reference convertor's
//! flags (`snapshotter.md` §11.1).

use std::path::PathBuf;

use clap::Parser;
use convertor::convert::{Convertor, Options};
use convertor::layer;
use convertor::registry::{Access, Registry};
use convertor::store::{Embedded, Shared, Store};

/// Converts `REPO:INPUT` (or `REPO@DIGEST`) into the overlaybd image `REPO:OUTPUT`.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-convertor", version, about)]
struct Args {
    /// `host/repository` of the source and of the result.
    #[arg(short = 'r', long = "repository")]
    repository: String,
    /// `user:password` for the registry.
    #[arg(short = 'u', long = "username", default_value = "")]
    username: String,
    /// Plain HTTP.
    #[arg(long)]
    plain: bool,
    /// Debug logging.
    #[arg(long)]
    verbose: bool,
    /// The source tag.
    #[arg(short = 'i', long = "input-tag", conflicts_with = "input_digest")]
    input_tag: Option<String>,
    /// The source digest.
    #[arg(short = 'g', long = "input-digest")]
    input_digest: Option<String>,
    /// The result's tag (alias of --overlaybd).
    #[arg(short = 'o', long = "output-tag")]
    output_tag: Option<String>,
    /// The result's tag.
    #[arg(long = "overlaybd")]
    overlaybd: Option<String>,
    /// TurboOCI output (not supported).
    #[arg(long = "turboOCI", alias = "fastoci")]
    turbo_oci: Option<String>,
    /// Work directory.
    #[arg(short = 'd', long = "dir", default_value = "tmp_conv")]
    dir: PathBuf,
    /// OCI media types for manifests, configs, layers and indexes (else Docker's).
    #[arg(long)]
    oci: bool,
    /// Filesystem of the layers (ext4 only).
    #[arg(long, default_value = "ext4")]
    fstype: String,
    /// Make the filesystem in the bottom layer (`--mkfs=false` needs the reference's base layer,
    /// which is not shipped).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    mkfs: bool,
    /// Virtual size of the image in GB.
    #[arg(long, default_value_t = 64)]
    vsize: u64,
    /// ZFile compression: lz4 or zstd.
    #[arg(long, default_value = "lz4")]
    algorithm: String,
    /// ZFile block size in KiB (4 to 64).
    #[arg(long, default_value_t = 4)]
    bs: u32,
    /// The dedup store: a redb file (default `$XDG_CACHE_HOME/overlaybd-convertor/dedup.redb`),
    /// or with `--db-type mysql` a DSN (`user:pass@tcp(host:port)/db`, or a `mysql://` URL).
    #[arg(long = "db-str", default_value = "")]
    db_str: String,
    /// `redb` (the default, embedded), `mysql` (shared by a fleet, the reference's tables), `none`.
    #[arg(long = "db-type", default_value = "")]
    db_type: String,
    /// Manifests converted at the same time (0: all).
    #[arg(long = "concurrency-limit", default_value_t = 4)]
    concurrency_limit: usize,
    /// Writable layers are not sparse while building.
    #[arg(long = "disable-sparse")]
    disable_sparse: bool,
    /// Point the result at its source (`subject`, `artifactType`); implies --oci.
    #[arg(long)]
    referrer: bool,
    /// Directories of `*.crt` CA certificates (and client pairs, not supported).
    #[arg(long = "cert-dir")]
    cert_dir: Vec<PathBuf>,
    /// A CA certificate (PEM).
    #[arg(long = "root-ca")]
    root_ca: Vec<PathBuf>,
    /// `cert:key` client certificate (not supported).
    #[arg(long = "client-cert")]
    client_cert: Vec<String>,
    /// Accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// Keep the work directory's layer files.
    #[arg(long)]
    reserve: bool,
    /// Build only; push nothing.
    #[arg(long = "no-upload")]
    no_upload: bool,
    /// Write the converted config, manifest and index into the work directory.
    #[arg(long = "dump-manifest")]
    dump_manifest: bool,
}

fn default_store() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("overlaybd-convertor/dedup.redb")
}

fn run(a: Args) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    if a.turbo_oci.is_some() {
        bail!("--turboOCI: TurboOCI images are not supported; use --overlaybd (-o)");
    }
    if !a.mkfs {
        bail!("--mkfs=false needs the reference's ext4 base layer, which is not shipped; leave --mkfs on");
    }
    if a.fstype != "ext4" {
        bail!("--fstype {}: only ext4 is supported", a.fstype);
    }
    if !a.client_cert.is_empty() {
        bail!("--client-cert: client certificates are not supported");
    }
    let output =
        a.overlaybd.clone().or(a.output_tag.clone()).context("give the result's tag with -o or --overlaybd")?;
    let (input, by_digest) = match (&a.input_tag, &a.input_digest) {
        (Some(t), None) => (t.clone(), false),
        (None, Some(d)) => (d.clone(), true),
        _ => bail!("give the source with -i TAG or -g DIGEST"),
    };
    let mut root_cas = a.root_ca.clone();
    for d in &a.cert_dir {
        for e in std::fs::read_dir(d).with_context(|| format!("--cert-dir {}", d.display()))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "crt") {
                root_cas.push(p);
            }
        }
    }
    let host = a.repository.split('/').next().unwrap_or_default().to_string();
    if !a.repository.contains('/') || host.is_empty() {
        bail!("-r {}: give host/repository", a.repository);
    }
    let access = Access { user: a.username.clone(), plain_http: a.plain, insecure: a.insecure, root_cas };
    let reg = Registry::new(&host, &access)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = match a.db_type.as_str() {
        "" | "redb" => {
            let p = if a.db_str.is_empty() { default_store() } else { PathBuf::from(&a.db_str) };
            Some(Store::Embedded(Embedded::open(&p)?))
        }
        "mysql" if a.db_str.is_empty() => bail!("--db-type mysql needs --db-str user:pass@tcp(host:port)/db"),
        "mysql" => Some(Store::Shared(rt.block_on(Shared::open(&a.db_str))?)),
        "none" => None,
        t => bail!("--db-type {t}: unknown (redb, mysql or none)"),
    };
    let opts = Options {
        layer: layer::Options {
            vsize_gb: a.vsize,
            sparse: !a.disable_sparse,
            algorithm: a.algorithm.clone(),
            block_size_kib: a.bs,
        },
        oci: a.oci,
        referrer: a.referrer,
        concurrency: a.concurrency_limit,
        dir: a.dir.clone(),
        reserve: a.reserve,
        no_upload: a.no_upload,
        dump_manifest: a.dump_manifest,
    };
    if !["lz4", "zstd"].contains(&a.algorithm.as_str()) {
        bail!("--algorithm {}: lz4 or zstd", a.algorithm);
    }
    if !(4..=64).contains(&a.bs) || !a.bs.is_power_of_two() {
        bail!("--bs {}: a power of two from 4 to 64 (KiB)", a.bs);
    }
    let conv = Convertor::new(reg, store, &a.repository, opts)?;
    let out = rt.block_on(conv.convert(&input, by_digest, &output))?;
    println!("{}:{} {}", a.repository, output, out.digest);
    Ok(())
}

fn main() {
    let a = Args::parse();
    let level = if a.verbose { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{level},oci_client=warn,reqwest=warn,hyper=warn"))
        }))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(a) {
        eprintln!("overlaybd-convertor: {e:#}");
        std::process::exit(1);
    }
}
