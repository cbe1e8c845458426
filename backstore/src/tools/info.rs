//! `overlaybd-info FILE...`: what a layer file is (wrappers, ZFile and LSMT headers, index
//! counts), as text or JSON; `--index` lists the mappings.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use serde::Serialize;

use crate::detect::{kind_of, unwrap, FileKind};
use crate::io::{LocalFile, ReadAt, Window};
use crate::lsmt::header::LsmtHeader;
use crate::lsmt::CommittedLayer;
use crate::zfile::ZFileHeader;

/// Describes overlaybd layer files.
#[derive(Parser, Debug)]
#[command(name = "overlaybd-info", version, about)]
pub struct Args {
    /// Files to describe.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List the index entries (offset length moffset zeroed, in sectors).
    #[arg(long)]
    pub index: bool,
    /// Verify every ZFile block checksum.
    #[arg(long)]
    pub verify: bool,
    /// Debug logging.
    #[arg(long)]
    pub verbose: bool,
}

/// The tar wrapper of a blob.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TarInfo {
    /// Payload offset.
    pub payload_offset: u64,
    /// Payload size.
    pub payload_size: u64,
    /// A PAX header preceded the entry.
    pub pax: bool,
}

/// The ZFile container of a blob.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ZFileInfo {
    /// Header flags as stored.
    pub header_flags: u64,
    /// Trailer flags as stored.
    pub trailer_flags: u64,
    /// Header digest as stored.
    pub digest: u32,
    /// Algorithm name.
    pub algorithm: String,
    /// Raw block size.
    pub block_size: u64,
    /// Number of blocks.
    pub blocks: u64,
    /// Raw (LSMT) size.
    pub original_file_size: u64,
    /// Jump table offset.
    pub index_offset: u64,
    /// Jump table CRC.
    pub index_crc: u32,
    /// Blocks carry CRCs.
    pub checksums: bool,
    /// All block CRCs were checked and are valid (`--verify`).
    pub verified: Option<bool>,
}

/// The LSMT layer inside a blob.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LsmtInfo {
    /// Header flags.
    pub header_flags: u32,
    /// Trailer flags.
    pub trailer_flags: u32,
    /// Layer UUID.
    pub uuid: String,
    /// Parent UUID.
    pub parent_uuid: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Index offset in bytes.
    pub index_offset: u64,
    /// Entries on disk, padding included.
    pub entries_on_disk: u64,
    /// Data entries.
    pub data_entries: u64,
    /// Zeroed entries.
    pub zeroed_entries: u64,
    /// Padding entries.
    pub padding_entries: u64,
    /// Bytes of data mapped.
    pub data_bytes: u64,
    /// Commit message.
    pub user_tag: String,
}

/// Everything known about one file.
#[derive(Debug, Serialize)]
pub struct LayerInfo {
    /// The file.
    pub file: String,
    /// Tar wrapper, if any.
    pub tar: Option<TarInfo>,
    /// ZFile, if any.
    pub zfile: Option<ZFileInfo>,
    /// The LSMT layer (committed or sealed).
    pub lsmt: Option<LsmtInfo>,
    /// For files that are not read-only layers: what they are.
    pub note: Option<String>,
}

/// Describes a file.
pub fn describe(path: &Path, verify: bool) -> anyhow::Result<(LayerInfo, Option<CommittedLayer>)> {
    let src: Arc<dyn ReadAt> = Arc::new(LocalFile::open(path)?);
    let mut info = LayerInfo { file: path.display().to_string(), tar: None, zfile: None, lsmt: None, note: None };
    let u = unwrap(src.clone(), true)?;
    if let Some(t) = u.tar {
        info.tar = Some(TarInfo { payload_offset: t.offset, payload_size: t.size, pax: t.pax });
    }
    if let Some(z) = &u.zfile {
        let outer: Arc<dyn ReadAt> = match u.tar {
            Some(t) => Arc::new(Window::new(src.clone(), t.offset, t.size)),
            None => src.clone(),
        };
        let mut h = [0u8; 512];
        outer.read_exact_at(&mut h, 0, "ZFile header")?;
        let head = ZFileHeader::decode(&h).expect("opened as a ZFile");
        outer.read_exact_at(&mut h, outer.size() - 512, "ZFile trailer")?;
        let trailer_flags = ZFileHeader::decode(&h).map(|t| t.flags).unwrap_or(0);
        let verified = if verify { Some(z.verify_all().is_ok()) } else { None };
        let e = z.header();
        info.zfile = Some(ZFileInfo {
            header_flags: head.flags,
            trailer_flags,
            digest: head.digest,
            algorithm: format!("{:?}", z.algorithm()).to_lowercase(),
            block_size: z.block_size(),
            blocks: z.blocks(),
            original_file_size: e.original_file_size,
            index_offset: e.index_offset,
            index_crc: e.index_crc,
            checksums: z.has_checksums(),
            verified,
        });
    }
    let mut h = [0u8; 4096];
    let n = u.inner.read_at(&mut h, 0)?;
    if kind_of(&h[..n]) != FileKind::Lsmt {
        info.note = Some("not an LSMT layer inside".into());
        return Ok((info, None));
    }
    let head = LsmtHeader::decode(&h[..n]).expect("has magic");
    if !head.is_sealed() && !head.is_data() {
        info.note = Some("index file of a writable layer".into());
        return Ok((info, None));
    }
    match CommittedLayer::open(u.inner.clone()) {
        Ok(l) => {
            let t = l.trailer();
            let segs = l.index().segments();
            let zeroed = segs.iter().filter(|s| s.zeroed).count() as u64;
            info.lsmt = Some(LsmtInfo {
                header_flags: l.header().flags,
                trailer_flags: t.flags,
                uuid: t.uuid.to_string(),
                parent_uuid: t.parent_uuid.to_string(),
                virtual_size: t.virtual_size,
                index_offset: t.index_offset,
                entries_on_disk: l.on_disk_entries(),
                data_entries: segs.len() as u64 - zeroed,
                zeroed_entries: zeroed,
                padding_entries: l.on_disk_entries() - segs.len() as u64,
                data_bytes: segs.iter().filter(|s| !s.zeroed).map(|s| s.length as u64 * 512).sum(),
                user_tag: String::from_utf8_lossy(&t.user_tag).into_owned(),
            });
            Ok((info, Some(l)))
        }
        Err(e) if !head.is_sealed() => {
            info.note = Some(format!("data file of a writable layer (flags {:#x}; not sealed: {e})", head.flags));
            Ok((info, None))
        }
        Err(e) => Err(e.into()),
    }
}

fn print_text(i: &LayerInfo) {
    println!("{}:", i.file);
    if let Some(t) = &i.tar {
        println!(
            "  tar wrapper: payload at {}, {} bytes{}",
            t.payload_offset,
            t.payload_size,
            if t.pax { " (PAX)" } else { "" }
        );
    }
    if let Some(z) = &i.zfile {
        println!(
            "  ZFile: flags {:#x}/{:#x}, digest {:#010x}, {}, {}-byte blocks, {} blocks, raw size {}, jump table at {} (crc {:#010x}), block checksums: {}{}",
            z.header_flags, z.trailer_flags, z.digest, z.algorithm, z.block_size, z.blocks, z.original_file_size, z.index_offset, z.index_crc,
            if z.checksums { "yes" } else { "no" },
            match z.verified { Some(true) => ", all valid", Some(false) => ", SOME INVALID", None => "" }
        );
    }
    if let Some(l) = &i.lsmt {
        println!(
            "  LSMT: flags {:#x}/{:#x}, uuid {}, parent {}, virtual size {}, index at {}: {} entries on disk = {} data + {} zeroed + {} padding, {} data bytes{}",
            l.header_flags, l.trailer_flags, l.uuid, l.parent_uuid, l.virtual_size, l.index_offset, l.entries_on_disk,
            l.data_entries, l.zeroed_entries, l.padding_entries, l.data_bytes,
            if l.user_tag.is_empty() { String::new() } else { format!(", tag {:?}", l.user_tag) }
        );
    }
    if let Some(n) = &i.note {
        println!("  {n}");
    }
}

/// Runs the tool.
pub fn run(a: &Args) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let mut bad = false;
    for f in &a.files {
        let (info, layer) = describe(f, a.verify)?;
        bad |= info.zfile.as_ref().is_some_and(|z| z.verified == Some(false));
        if !a.json {
            print_text(&info);
        }
        if a.index {
            if let Some(l) = layer {
                for s in l.index().segments() {
                    println!("{} {} {} {}", s.offset, s.length, s.moffset, s.zeroed as u8);
                }
            }
        }
        all.push(info);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    if bad {
        anyhow::bail!("block checksum verification failed");
    }
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let a = Args::parse();
    super::run("overlaybd-info", a.verbose, || run(&a))
}
