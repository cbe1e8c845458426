//! containerd's content store: info, labels, reading a blob (into memory or a file) and the
//! streaming write (expected digest and size, commit with labels).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::containerd::{call, Containerd, QUICK};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// Bound of a whole blob transfer.
pub const TRANSFER: Duration = Duration::from_secs(3600);
/// Bound of the wait for one message of a transfer.
pub const IDLE: Duration = Duration::from_secs(120);
/// Bytes per write message (containerd accepts messages of up to 16 MiB).
pub const CHUNK: usize = 1 << 20;

/// The content store's record of `digest`, or `None` when it does not hold it.
pub async fn info(cd: &Containerd, digest: &str) -> Result<Option<Info>> {
    let mut c = cd.client().content();
    let req = cd.request(InfoRequest { digest: digest.to_string() }, QUICK);
    match call(&format!("Content.Info {digest}"), QUICK, c.info(req)).await {
        Ok(r) => Ok(r.info),
        Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets `labels` on the blob `digest` (other labels stay).
pub async fn set_labels(cd: &Containerd, digest: &str, labels: &HashMap<String, String>) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let mut c = cd.client().content();
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let req = UpdateRequest {
        info: Some(Info { digest: digest.to_string(), labels: labels.clone(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths }),
    };
    call(&format!("Content.Update {digest}"), QUICK, c.update(cd.request(req, QUICK))).await.map(|_| ())
}

/// Where a read blob goes.
enum Sink<'a> {
    Memory(&'a mut Vec<u8>),
    File(&'a mut tokio::fs::File, &'a Path),
}

/// Streams blob `desc` out of the store into `sink`, and checks the digest and size of what
/// came.
async fn read_into(cd: &Containerd, desc: &Descriptor, mut sink: Sink<'_>) -> Result<()> {
    let what = format!("Content.Read {}", desc.digest);
    let mut c = cd.client().content();
    let req = cd.request(ReadContentRequest { digest: desc.digest.clone(), offset: 0, size: 0 }, TRANSFER);
    let mut stream = call(&what, QUICK, c.read(req)).await?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        let msg = match tokio::time::timeout(IDLE, stream.message()).await {
            Err(_) => return Err(Error::Timeout { what: format!("containerd {what}"), after: IDLE }),
            Ok(Err(status)) => return Err(Error::Containerd { call: what, status }),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => m,
        };
        n += msg.data.len() as u64;
        if n > desc.size {
            return Err(Error::Image(format!(
                "blob {} is larger than its descriptor's {} bytes",
                desc.digest, desc.size
            )));
        }
        h.update(&msg.data);
        match &mut sink {
            Sink::Memory(v) => v.extend_from_slice(&msg.data),
            Sink::File(f, p) => f.write_all(&msg.data).await.map_err(|e| Error::io(p.display(), e))?,
        }
    }
    let got = format!("sha256:{}", hex::encode(h.finalize()));
    if n != desc.size || got != desc.digest {
        return Err(Error::Image(format!(
            "blob {} in containerd's content store is {n} bytes with digest {got}, not {} bytes",
            desc.digest, desc.size
        )));
    }
    Ok(())
}

/// Blob `desc` (at most [`crate::manifest::MAX_DOCUMENT`] bytes) in memory.
pub async fn read_all(cd: &Containerd, desc: &Descriptor) -> Result<Vec<u8>> {
    if desc.size > crate::manifest::MAX_DOCUMENT {
        return Err(Error::Image(format!("{} is {} bytes: too large for an image document", desc.digest, desc.size)));
    }
    let mut out = Vec::with_capacity(desc.size as usize);
    read_into(cd, desc, Sink::Memory(&mut out)).await?;
    Ok(out)
}

/// Blob `desc` into the file `path`.
pub async fn read_to_file(cd: &Containerd, desc: &Descriptor, path: &Path) -> Result<()> {
    let io = |e| Error::io(path.display(), e);
    let mut f = tokio::fs::File::create(path).await.map_err(io)?;
    read_into(cd, desc, Sink::File(&mut f, path)).await?;
    f.flush().await.map_err(io)?;
    Ok(())
}

/// Writes the blob `desc` from `data` under the writer ref `wref`, committed with `labels`. A
/// blob the store already holds gets the labels and joins the lease instead.
pub async fn write<S>(
    cd: &Containerd,
    wref: &str,
    desc: &Descriptor,
    labels: &HashMap<String, String>,
    data: S,
) -> Result<()>
where
    S: Stream<Item = Result<Vec<u8>>> + Unpin,
{
    let what = format!("Content.Write {} (ref {wref})", desc.digest);
    let total = i64::try_from(desc.size).map_err(|_| Error::Image(format!("{}: size out of range", desc.digest)))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let producer = produce(tx, wref, desc, total, labels, data);
    let consumer = async {
        let mut c = cd.client().content();
        let req = cd.request(tokio_stream::wrappers::ReceiverStream::new(rx), TRANSFER);
        let mut replies = call(&what, TRANSFER, c.write(req)).await?;
        loop {
            match tokio::time::timeout(IDLE, replies.message()).await {
                Err(_) => return Err(Error::Timeout { what: format!("containerd {what}"), after: IDLE }),
                Ok(Err(status)) => return Err(Error::Containerd { call: what.clone(), status }),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(_))) => {}
            }
        }
    };
    let (sent, written) = tokio::join!(producer, consumer);
    let result = match (sent, written) {
        (_, Err(e)) if e.code() == Some(Code::AlreadyExists) => {
            tracing::debug!(digest = %desc.digest, "already in the content store");
            set_labels(cd, &desc.digest, labels).await?;
            return cd.add_to_lease("content", &desc.digest).await;
        }
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    };
    if result.is_err() {
        let mut c = cd.client().content();
        let _ =
            call("Content.Abort", QUICK, c.abort(cd.request(AbortRequest { r#ref: wref.to_string() }, QUICK))).await;
    }
    result
}

/// Sends the write messages: the data with offsets, then the commit.
async fn produce<S>(
    tx: tokio::sync::mpsc::Sender<WriteContentRequest>,
    wref: &str,
    desc: &Descriptor,
    total: i64,
    labels: &HashMap<String, String>,
    mut data: S,
) -> Result<()>
where
    S: Stream<Item = Result<Vec<u8>>> + Unpin,
{
    let mut offset = 0i64;
    let mut first = true;
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        if chunk.is_empty() {
            continue;
        }
        let n = chunk.len() as i64;
        let msg = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: wref.to_string(),
            total: if first { total } else { 0 },
            expected: if first { desc.digest.clone() } else { String::new() },
            offset,
            data: chunk,
            labels: HashMap::new(),
        };
        first = false;
        offset += n;
        if tx.send(msg).await.is_err() {
            // containerd ended the call; the consumer reports why
            return Ok(());
        }
    }
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: wref.to_string(),
        total,
        expected: desc.digest.clone(),
        offset,
        data: Vec::new(),
        labels: labels.clone(),
    };
    let _ = tx.send(commit).await;
    Ok(())
}

/// Writes `bytes` as a blob (digest and size computed) with `labels`; its descriptor.
pub async fn write_bytes(
    cd: &Containerd,
    media_type: &str,
    bytes: &[u8],
    labels: &HashMap<String, String>,
) -> Result<Descriptor> {
    let desc = Descriptor {
        media_type: media_type.to_string(),
        digest: crate::manifest::digest_of(bytes),
        size: bytes.len() as u64,
        annotations: HashMap::new(),
    };
    let wref = format!("ctr-obd-{}", crate::containerd::unique());
    let chunks: Vec<Result<Vec<u8>>> = bytes.chunks(CHUNK).map(|c| Ok(c.to_vec())).collect();
    write(cd, &wref, &desc, labels, futures::stream::iter(chunks)).await?;
    Ok(desc)
}

/// Writes the file `path` as blob `desc` with `labels`.
pub async fn write_file(
    cd: &Containerd,
    path: &Path,
    desc: &Descriptor,
    labels: &HashMap<String, String>,
) -> Result<()> {
    let f = tokio::fs::File::open(path).await.map_err(|e| Error::io(path.display(), e))?;
    let chunks = futures::stream::unfold(Some(f), move |state| async move {
        let mut f = state?;
        let mut buf = Vec::with_capacity(CHUNK);
        match (&mut f).take(CHUNK as u64).read_to_end(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf), Some(f))),
            Err(e) => Some((Err(Error::io(path.display(), e)), None)),
        }
    });
    let wref = format!("ctr-obd-{}", crate::containerd::unique());
    write(cd, &wref, desc, labels, Box::pin(chunks)).await
}
