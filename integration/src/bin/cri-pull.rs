//! `cri-pull [--address SOCKET] [--timeout SECS] IMAGE`: pulls IMAGE through containerd's CRI
//! plugin the way the kubelet does (ImageService.PullImage), prints the image ref, and exits
//! non-zero with the error otherwise. Debian has no crictl; the quickstart and the cold-start
//! benchmark use this to make containerd pull lazily through overlaybd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use overlaybd_integration::cri;

/// Pulls an image through containerd's CRI plugin.
#[derive(Parser, Debug)]
#[command(name = "cri-pull", version)]
struct Args {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = cri::DEFAULT_TIMEOUT.as_secs())]
    timeout: u64,
    /// The image reference.
    image: String,
}

fn main() -> ExitCode {
    let a = Args::parse();
    match cri::pull_within(&a.address, &a.image, Duration::from_secs(a.timeout)) {
        Ok(r) => {
            println!("{r}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cri-pull: {e}");
            ExitCode::FAILURE
        }
    }
}
