//! `cri-pull [--address SOCKET] [--timeout SECS] IMAGE`: pulls IMAGE through containerd's CRI
//! plugin the way the kubelet does (ImageService.PullImage), prints the image ref, and exits
//! non-zero with the error otherwise. Debian has no crictl; the quickstart and the cold-start
//! benchmark use this to make containerd pull lazily through overlaybd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, PullImageRequest};

/// Pulls an image through containerd's CRI plugin.
#[derive(Parser, Debug)]
#[command(name = "cri-pull", version, about)]
struct Args {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The image reference.
    image: String,
}

async fn pull(a: &Args) -> Result<String, String> {
    let p = a.address.clone();
    let ch =
        tonic::transport::Endpoint::try_from("http://[::]")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .map_err(|e| format!("connecting to {}: {e}", a.address.display()))?;
    let req = PullImageRequest {
        image: Some(ImageSpec { image: a.image.clone(), ..Default::default() }),
        ..Default::default()
    };
    let r = ImageServiceClient::new(ch)
        .pull_image(req)
        .await
        .map_err(|e| format!("PullImage {}: {}", a.image, e.message()))?;
    Ok(r.into_inner().image_ref)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cri-pull: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(a.timeout), pull(&a)).await }) {
        Ok(Ok(r)) => {
            println!("{r}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("cri-pull: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("cri-pull: no answer within {} s", a.timeout);
            ExitCode::FAILURE
        }
    }
}
