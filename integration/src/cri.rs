//! A CRI client of containerd: pulls an image through containerd's CRI plugin the way the
//! kubelet does (ImageService.PullImage). Debian has no crictl.

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, PullImageRequest};

/// How long [`pull`] waits for containerd's answer (`cri-pull --timeout`'s default too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// PullImage of `image` through containerd's CRI plugin at `socket`: the image ref, or the
/// error as text.
pub async fn pull_async(socket: &Path, image: &str) -> Result<String, String> {
    let p = socket.to_path_buf();
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
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let req = PullImageRequest {
        image: Some(ImageSpec { image: image.to_string(), ..Default::default() }),
        ..Default::default()
    };
    let r =
        ImageServiceClient::new(ch).pull_image(req).await.map_err(|e| format!("PullImage {image}: {}", e.message()))?;
    Ok(r.into_inner().image_ref)
}

/// [`pull_async`] on a runtime of its own, giving up after `timeout`.
pub fn pull_within(socket: &Path, image: &str, timeout: Duration) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async { tokio::time::timeout(timeout, pull_async(socket, image)).await })
        .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs())))
}

/// [`pull_within`] the [`DEFAULT_TIMEOUT`].
pub fn pull(socket: &Path, image: &str) -> Result<String, String> {
    pull_within(socket, image, DEFAULT_TIMEOUT)
}
