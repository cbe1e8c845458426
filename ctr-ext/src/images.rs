//! containerd's image records: reading one, creating or replacing one.

use std::collections::HashMap;

use containerd_client::services::v1::{CreateImageRequest, GetImageRequest, Image, UpdateImageRequest};
use containerd_client::tonic::Code;

use crate::containerd::{call, Containerd, QUICK};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// The record of image `name`, or `None` when the namespace has none.
pub async fn get(cd: &Containerd, name: &str) -> Result<Option<Image>> {
    let mut c = cd.client().images();
    let req = cd.request(GetImageRequest { name: name.to_string() }, QUICK);
    match call(&format!("Images.Get {name}"), QUICK, c.get(req)).await {
        Ok(r) => Ok(r.image),
        Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records image `name` pointing at `target` with `labels`, replacing an existing record of
/// that name (as `ctr image pull` does).
pub async fn put(cd: &Containerd, name: &str, target: &Descriptor, labels: HashMap<String, String>) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Usage("the image name is empty".into()));
    }
    let mut t = target.to_containerd();
    t.annotations.clear();
    let image = Image { name: name.to_string(), labels, target: Some(t), created_at: None, updated_at: None };
    let mut c = cd.client().images();
    let req = cd.request(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }, QUICK);
    match call(&format!("Images.Create {name}"), QUICK, c.create(req)).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(Code::AlreadyExists) => {
            let req = cd
                .request(UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None }, QUICK);
            call(&format!("Images.Update {name}"), QUICK, c.update(req)).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}
