//! The SCSI block commands a Linux initiator (the `sd` driver over tcm_loop) sends, emulated
//! over a [`BlockDevice`]: TEST UNIT READY, REQUEST SENSE, INQUIRY (standard and VPD pages
//! 0x00/0x80/0x83/0xb0/0xb1/0xb2), READ CAPACITY 10/16, MODE SENSE 6/10, READ/WRITE 6/10/12/16,
//! SYNCHRONIZE CACHE 10/16, UNMAP and WRITE SAME 10/16, START STOP UNIT and PREVENT ALLOW
//! MEDIUM REMOVAL. Anything else, and every failure, is a CHECK CONDITION with fixed-format
//! sense data. REPORT LUNS is answered by the kernel.
//!
//! Data moves through the command's data buffer as a list of segments (the TCMU iovecs).

use crate::block::BlockDevice;
use crate::Error;

/// Logical block size the device reports.
pub const BLOCK_SIZE: u32 = 512;
/// Largest READ/WRITE transfer advertised in the Block Limits page, in bytes.
pub const MAX_TRANSFER: u32 = 512 << 10;
/// Largest UNMAP / WRITE SAME range advertised, in blocks (1 GiB).
const MAX_UNMAP_BLOCKS: u32 = (1 << 30) / BLOCK_SIZE;
/// UNMAP descriptors accepted per command.
const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;

/// What the device tells the initiator about itself.
#[derive(Clone, Debug)]
pub struct LunInfo {
    /// Size in blocks of [`BLOCK_SIZE`].
    pub blocks: u64,
    /// Write protected (no writable layer).
    pub read_only: bool,
    /// Unit serial number (VPD 0x80), ASCII.
    pub serial: String,
    /// 36-bit vendor-specific part of the NAA-5 identifier (VPD 0x83).
    pub naa_id: u64,
}

impl LunInfo {
    /// Describes `dev` under `serial`; the NAA identifier is derived from the serial.
    pub fn new(dev: &dyn BlockDevice, serial: &str) -> Self {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(serial.as_bytes());
        let naa_id = u64::from_be_bytes(h[..8].try_into().unwrap_or_default()) & ((1 << 36) - 1);
        LunInfo { blocks: dev.size() / BLOCK_SIZE as u64, read_only: dev.read_only(), serial: serial.into(), naa_id }
    }
}

/// Sense key, additional sense code and qualifier of a failed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Sense = Sense { key: 0x05, asc: 0x20, ascq: 0x00 };
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense { key: 0x05, asc: 0x24, ascq: 0x00 };
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMS: Sense = Sense { key: 0x05, asc: 0x26, ascq: 0x00 };
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    pub const PARAM_LIST_LENGTH: Sense = Sense { key: 0x05, asc: 0x1a, ascq: 0x00 };
    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense { key: 0x05, asc: 0x21, ascq: 0x00 };
    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_NOT_SUPPORTED: Sense = Sense { key: 0x05, asc: 0x39, ascq: 0x00 };
    /// DATA PROTECT, WRITE PROTECTED.
    pub const WRITE_PROTECTED: Sense = Sense { key: 0x07, asc: 0x27, ascq: 0x00 };
    /// DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (the backing store is full).
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense { key: 0x07, asc: 0x27, ascq: 0x07 };
    /// MEDIUM ERROR, UNRECOVERED READ ERROR.
    pub const READ_ERROR: Sense = Sense { key: 0x03, asc: 0x11, ascq: 0x00 };
    /// MEDIUM ERROR, WRITE ERROR.
    pub const WRITE_ERROR: Sense = Sense { key: 0x03, asc: 0x0c, ascq: 0x00 };
    /// HARDWARE ERROR, LOGICAL UNIT FAILURE (used when the server behind the device is gone).
    pub const LUN_FAILURE: Sense = Sense { key: 0x04, asc: 0x3e, ascq: 0x01 };

    /// Fixed-format sense data (18 bytes, response code 0x70).
    pub fn fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }

    /// The sense for a device error: `writing` picks WRITE ERROR over UNRECOVERED READ ERROR.
    fn from_error(e: &Error, writing: bool) -> Sense {
        match e {
            Error::OutOfRange { .. } => Sense::LBA_OUT_OF_RANGE,
            Error::ReadOnly => Sense::WRITE_PROTECTED,
            _ if e.errno() == nix::libc::ENOSPC || e.errno() == nix::libc::EDQUOT => Sense::SPACE_ALLOCATION_FAILED,
            _ if writing => Sense::WRITE_ERROR,
            _ => Sense::READ_ERROR,
        }
    }
}

/// A command's data buffer: the segments the kernel mapped for it, in order.
pub struct DataBuf<'a> {
    segs: Vec<&'a mut [u8]>,
}

impl<'a> DataBuf<'a> {
    /// A buffer made of `segs`.
    pub fn new(segs: Vec<&'a mut [u8]>) -> Self {
        DataBuf { segs }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.segs.iter().map(|s| s.len()).sum()
    }

    /// True if there is no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `src` to the start of the buffer (as much as fits) and zeroes the rest.
    fn fill(&mut self, src: &[u8]) {
        let mut pos = 0;
        for s in self.segs.iter_mut() {
            let n = s.len().min(src.len().saturating_sub(pos));
            s[..n].copy_from_slice(&src[pos..pos + n]);
            s[n..].fill(0);
            pos += n;
        }
    }

    /// The first `max` bytes of the buffer.
    fn gather(&self, max: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(max.min(self.len()));
        for s in &self.segs {
            let n = s.len().min(max - v.len());
            v.extend_from_slice(&s[..n]);
            if v.len() == max {
                break;
            }
        }
        v
    }

    /// Reads `len` bytes of `dev` at `offset` into the buffer, segment by segment.
    fn read_from(&mut self, dev: &dyn BlockDevice, mut offset: u64, len: usize) -> crate::Result<()> {
        let mut left = len;
        for s in self.segs.iter_mut() {
            if left == 0 {
                break;
            }
            let n = s.len().min(left);
            dev.read_at(&mut s[..n], offset)?;
            offset += n as u64;
            left -= n;
        }
        Ok(())
    }

    /// Writes the first `len` bytes of the buffer to `dev` at `offset`.
    fn write_to(&self, dev: &dyn BlockDevice, mut offset: u64, len: usize) -> crate::Result<()> {
        let mut left = len;
        for s in &self.segs {
            if left == 0 {
                break;
            }
            let n = s.len().min(left);
            dev.write_at(&s[..n], offset)?;
            offset += n as u64;
            left -= n;
        }
        Ok(())
    }
}

fn be16(b: &[u8]) -> u64 {
    u16::from_be_bytes([b[0], b[1]]) as u64
}
fn be32(b: &[u8]) -> u64 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Length the CDB of `opcode` must have (by its group code).
fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 6,
    }
}

/// Executes `cdb` against `dev`. `Ok(())` is GOOD status; `Err` is CHECK CONDITION with that sense.
pub fn execute(cdb: &[u8], data: &mut DataBuf<'_>, dev: &dyn BlockDevice, lun: &LunInfo) -> Result<(), Sense> {
    let Some(&op) = cdb.first() else { return Err(Sense::INVALID_OPCODE) };
    if cdb.len() < cdb_len(op) {
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    match op {
        0x00 | 0x1b | 0x1e => Ok(()), // TEST UNIT READY, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL
        0x03 => {
            // REQUEST SENSE: nothing is pending.
            let mut s = [0u8; 18];
            s[0] = 0x70;
            s[7] = 10;
            data.fill(&s);
            Ok(())
        }
        0x12 => inquiry(cdb, data, lun),
        0x25 => {
            let mut r = [0u8; 8];
            r[..4].copy_from_slice(&(lun.blocks.saturating_sub(1).min(u32::MAX as u64) as u32).to_be_bytes());
            r[4..].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
            data.fill(&r);
            Ok(())
        }
        0x9e if cdb[1] & 0x1f == 0x10 => {
            let mut r = [0u8; 32];
            r[..8].copy_from_slice(&lun.blocks.saturating_sub(1).to_be_bytes());
            r[8..12].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
            r[13] = (4096 / BLOCK_SIZE).trailing_zeros() as u8; // 4 KiB physical blocks
            if !lun.read_only {
                r[14] = 0x80 | 0x40; // LBPME, LBPRZ: unmapped blocks read as zeros
            }
            data.fill(&r);
            Ok(())
        }
        0x1a | 0x5a => mode_sense(cdb, data, lun),
        0x08 | 0x28 | 0xa8 | 0x88 => {
            let (lba, blocks) = rw_range(cdb);
            let (offset, len) = check_range(lba, blocks, lun)?;
            let len = len.min(data.len());
            data.read_from(dev, offset, len).map_err(|e| log_err("read", offset, len, e, false))
        }
        0x0a | 0x2a | 0xaa | 0x8a => {
            if lun.read_only {
                return Err(Sense::WRITE_PROTECTED);
            }
            let (lba, blocks) = rw_range(cdb);
            let (offset, len) = check_range(lba, blocks, lun)?;
            let len = len.min(data.len());
            data.write_to(dev, offset, len).map_err(|e| log_err("write", offset, len, e, true))
        }
        0x35 | 0x91 => dev.flush().map_err(|e| log_err("flush", 0, 0, e, true)),
        0x42 => unmap(data, dev, lun),
        0x41 | 0x93 => write_same(cdb, data, dev, lun),
        _ => Err(Sense::INVALID_OPCODE),
    }
}

fn log_err(what: &str, offset: u64, len: usize, e: Error, writing: bool) -> Sense {
    tracing::error!(op = what, offset, len, error = %e, "I/O error");
    Sense::from_error(&e, writing)
}

/// LBA and block count of a READ/WRITE CDB.
fn rw_range(cdb: &[u8]) -> (u64, u64) {
    match cdb[0] >> 5 {
        0 => {
            let lba = ((cdb[1] as u64 & 0x1f) << 16) | be16(&cdb[2..]);
            let n = if cdb[4] == 0 { 256 } else { cdb[4] as u64 };
            (lba, n)
        }
        1 => (be32(&cdb[2..]), be16(&cdb[7..])),
        5 => (be32(&cdb[2..]), be32(&cdb[6..])),
        _ => (be64(&cdb[2..]), be32(&cdb[10..])),
    }
}

/// Byte offset and length of `blocks` blocks at `lba`, or LBA OUT OF RANGE.
fn check_range(lba: u64, blocks: u64, lun: &LunInfo) -> Result<(u64, usize), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lun.blocks => {
            Ok((lba * BLOCK_SIZE as u64, usize::try_from(blocks * BLOCK_SIZE as u64).unwrap_or(usize::MAX)))
        }
        _ => Err(Sense::LBA_OUT_OF_RANGE),
    }
}

fn inquiry(cdb: &[u8], data: &mut DataBuf<'_>, lun: &LunInfo) -> Result<(), Sense> {
    let evpd = cdb[1] & 1 != 0;
    let page = cdb[2];
    if !evpd {
        if page != 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut r = [0u8; 36];
        r[2] = 0x06; // SPC-4
        r[3] = 0x02; // response data format 2
        r[4] = (r.len() - 5) as u8;
        r[7] = 0x02; // CMDQUE
        r[8..16].copy_from_slice(b"LIO-ORG ");
        r[16..32].copy_from_slice(b"overlaybd       ");
        r[32..36].copy_from_slice(b"0001");
        data.fill(&r);
        return Ok(());
    }
    let body: Vec<u8> = match page {
        0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
        0x80 => lun.serial.as_bytes().to_vec(),
        0x83 => {
            // NAA-5 (IEEE registered), company id 0x001405 as LIO uses, then a T10 vendor id.
            let naa = (5u64 << 60) | (0x001405u64 << 36) | lun.naa_id;
            let mut v = vec![0x01, 0x03, 0x00, 0x08];
            v.extend_from_slice(&naa.to_be_bytes());
            let t10 = format!("LIO-ORG {}", lun.serial);
            v.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
            v.extend_from_slice(t10.as_bytes());
            v
        }
        0xb0 => {
            let mut v = vec![0u8; 0x3c];
            v[2..4].copy_from_slice(&((4096 / BLOCK_SIZE) as u16).to_be_bytes()); // optimal granularity
            v[4..8].copy_from_slice(&(MAX_TRANSFER / BLOCK_SIZE).to_be_bytes()); // maximum transfer
            v[8..12].copy_from_slice(&(MAX_TRANSFER / BLOCK_SIZE).to_be_bytes()); // optimal transfer
            if !lun.read_only {
                v[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                v[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                v[24..28].copy_from_slice(&(4096 / BLOCK_SIZE).to_be_bytes()); // unmap granularity
                v[32..40].copy_from_slice(&(MAX_UNMAP_BLOCKS as u64).to_be_bytes());
                // max WRITE SAME
            }
            v
        }
        0xb1 => {
            let mut v = vec![0u8; 0x3c];
            v[1] = 0x01; // medium rotation rate: non-rotating
            v
        }
        0xb2 => {
            if lun.read_only {
                vec![0u8; 4]
            } else {
                // LBPU, LBPWS, LBPWS10; LBPRZ = 1; thin provisioned.
                vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]
            }
        }
        _ => return Err(Sense::INVALID_FIELD_IN_CDB),
    };
    let mut r = vec![0x00, page];
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(&body);
    data.fill(&r);
    Ok(())
}

fn mode_sense(cdb: &[u8], data: &mut DataBuf<'_>, lun: &LunInfo) -> Result<(), Sense> {
    let ten = cdb[0] == 0x5a;
    let dbd = cdb[1] & 0x08 != 0;
    let pc = cdb[2] >> 6;
    let page = cdb[2] & 0x3f;
    let subpage = cdb[3];
    if pc == 3 {
        return Err(Sense::SAVING_NOT_SUPPORTED);
    }
    let changeable = pc == 1;
    let caching = || {
        let mut p = vec![0u8; 20];
        p[0] = 0x08;
        p[1] = 0x12;
        if !changeable && !lun.read_only {
            p[2] = 0x04; // WCE: the initiator sends SYNCHRONIZE CACHE, which flushes the upper layer
        }
        p
    };
    let control = || {
        let mut p = vec![0u8; 12];
        p[0] = 0x0a;
        p[1] = 0x0a;
        if !changeable {
            p[3] = 0x10; // unrestricted reordering allowed
        }
        p
    };
    let mut pages = Vec::new();
    match (page, subpage) {
        (0x08, 0) => pages.extend(caching()),
        (0x0a, 0) => pages.extend(control()),
        (0x3f, 0 | 0xff) => {
            pages.extend(caching());
            pages.extend(control());
        }
        _ => return Err(Sense::INVALID_FIELD_IN_CDB),
    }
    let mut desc = Vec::new();
    if !dbd {
        desc = vec![0u8; 8];
        if ten {
            desc[..4].copy_from_slice(&(lun.blocks.min(u32::MAX as u64) as u32).to_be_bytes());
        } else {
            desc[..4].copy_from_slice(&(lun.blocks.min(0xff_ffff) as u32).to_be_bytes());
            desc[0] = 0; // density code
        }
        desc[4..].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
        desc[4] = 0;
    }
    let specific = if lun.read_only { 0x80 } else { 0x00 }; // WP; no DPOFUA: FUA becomes a flush
    let mut r = Vec::new();
    if ten {
        let total = 8 + desc.len() + pages.len();
        r.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        r.extend_from_slice(&[0, specific, 0, 0]);
        r.extend_from_slice(&(desc.len() as u16).to_be_bytes());
    } else {
        let total = 4 + desc.len() + pages.len();
        r.extend_from_slice(&[(total - 1) as u8, 0, specific, desc.len() as u8]);
    }
    r.extend_from_slice(&desc);
    r.extend_from_slice(&pages);
    data.fill(&r);
    Ok(())
}

fn unmap(data: &mut DataBuf<'_>, dev: &dyn BlockDevice, lun: &LunInfo) -> Result<(), Sense> {
    if lun.read_only {
        return Err(Sense::WRITE_PROTECTED);
    }
    if data.is_empty() {
        return Ok(());
    }
    let params = data.gather(8 + 16 * MAX_UNMAP_DESCRIPTORS as usize);
    if params.len() < 8 {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let desc_len = be16(&params[2..]) as usize;
    if !desc_len.is_multiple_of(16) || 8 + desc_len > params.len() {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let descs: Vec<(u64, u64)> =
        params[8..8 + desc_len].chunks_exact(16).map(|d| (be64(&d[..8]), be32(&d[8..12]))).collect();
    // Check all before changing anything.
    for &(lba, n) in &descs {
        if n > MAX_UNMAP_BLOCKS as u64 {
            return Err(Sense::INVALID_FIELD_IN_PARAMS);
        }
        check_range(lba, n, lun)?;
    }
    for (lba, n) in descs {
        if n > 0 {
            let (offset, len) = check_range(lba, n, lun)?;
            dev.discard(offset, len as u64).map_err(|e| log_err("unmap", offset, len, e, true))?;
        }
    }
    Ok(())
}

fn write_same(cdb: &[u8], data: &mut DataBuf<'_>, dev: &dyn BlockDevice, lun: &LunInfo) -> Result<(), Sense> {
    if lun.read_only {
        return Err(Sense::WRITE_PROTECTED);
    }
    let unmap_bit = cdb[1] & 0x08 != 0;
    let (lba, mut blocks) =
        if cdb[0] == 0x41 { (be32(&cdb[2..]), be16(&cdb[7..])) } else { (be64(&cdb[2..]), be32(&cdb[10..])) };
    if blocks == 0 {
        blocks = lun.blocks.saturating_sub(lba); // zero means "to the end of the medium"
    }
    if blocks > MAX_UNMAP_BLOCKS as u64 {
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    let (offset, len) = check_range(lba, blocks, lun)?;
    let block = data.gather(BLOCK_SIZE as usize);
    let zeros = block.iter().all(|&b| b == 0);
    if (unmap_bit && block.is_empty()) || (zeros && !block.is_empty()) {
        // Discarded ranges read as zeros, so an unmap is exactly a write of zeros here (and a
        // WRITE SAME of a non-zero block with UNMAP set must write the block).
        return dev.discard(offset, len as u64).map_err(|e| log_err("write same (unmap)", offset, len, e, true));
    }
    if block.len() < BLOCK_SIZE as usize {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let chunk: Vec<u8> = block.iter().copied().cycle().take(len.min(MAX_TRANSFER as usize)).collect();
    let mut done = 0;
    while done < len {
        let n = chunk.len().min(len - done);
        dev.write_at(&chunk[..n], offset + done as u64).map_err(|e| log_err("write same", offset, len, e, true))?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Mem {
        bytes: Mutex<Vec<u8>>,
        ro: bool,
        fail: bool,
    }
    impl BlockDevice for Mem {
        fn size(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            self.ro
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
            if self.fail {
                return Err(Error::io("x", "read", std::io::Error::from_raw_os_error(5)));
            }
            let b = self.bytes.lock().unwrap();
            buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> crate::Result<()> {
            if self.fail {
                return Err(Error::io("x", "write", std::io::Error::from_raw_os_error(28)));
            }
            self.bytes.lock().unwrap()[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> crate::Result<()> {
            self.bytes.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
        fn flush(&self) -> crate::Result<()> {
            Ok(())
        }
    }

    fn mem(blocks: usize, ro: bool) -> (Mem, LunInfo) {
        let m = Mem { bytes: Mutex::new((0..blocks * 512).map(|i| (i % 251) as u8).collect()), ro, fail: false };
        let l = LunInfo::new(&m, "abc");
        (m, l)
    }

    /// Runs `cdb` with a data buffer of `len` bytes split in segments of 700 bytes.
    fn run(cdb: &[u8], input: &[u8], len: usize, dev: &Mem, lun: &LunInfo) -> (Result<(), Sense>, Vec<u8>) {
        let mut buf = input.to_vec();
        buf.resize(len, 0xee);
        let segs: Vec<&mut [u8]> = buf.chunks_mut(700).collect();
        let mut d = DataBuf::new(segs);
        let r = execute(cdb, &mut d, dev, lun);
        (r, buf)
    }

    #[test]
    fn read_write_all_cdb_sizes() {
        let (m, l) = mem(64, false);
        let data: Vec<u8> = (0..2048).map(|i| (i * 7) as u8).collect();
        // WRITE 10 at LBA 3, 4 blocks; then READ 6, READ 12 and READ 16 of the same range.
        let (r, _) = run(&[0x2a, 0, 0, 0, 0, 3, 0, 0, 4, 0], &data, 2048, &m, &l);
        assert_eq!(r, Ok(()));
        for cdb in [
            vec![0x08, 0, 0, 3, 4, 0],
            vec![0xa8, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0],
            vec![0x88, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0],
        ] {
            let (r, out) = run(&cdb, &[], 2048, &m, &l);
            assert_eq!(r, Ok(()));
            assert_eq!(out, data);
        }
        // WRITE 16 of one block, WRITE 6 and WRITE 12
        assert_eq!(run(&[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 63, 0, 0, 0, 1, 0, 0], &[9; 512], 512, &m, &l).0, Ok(()));
        assert_eq!(m.bytes.lock().unwrap()[63 * 512..], [9; 512]);
        assert_eq!(run(&[0x0a, 0, 0, 1, 1, 0], &[8; 512], 512, &m, &l).0, Ok(()));
        assert_eq!(run(&[0xaa, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0], &[7; 512], 512, &m, &l).0, Ok(()));
        assert_eq!(m.bytes.lock().unwrap()[512..1536], [[8u8; 512], [7; 512]].concat());
    }

    #[test]
    fn out_of_range_and_read_only() {
        let (m, l) = mem(64, false);
        assert_eq!(run(&[0x28, 0, 0, 0, 0, 63, 0, 0, 2, 0], &[], 1024, &m, &l).0, Err(Sense::LBA_OUT_OF_RANGE));
        let huge = [0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0];
        assert_eq!(run(&huge, &[], 512, &m, &l).0, Err(Sense::LBA_OUT_OF_RANGE));
        let (m, l) = mem(64, true);
        assert_eq!(run(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 512, &m, &l).0, Err(Sense::WRITE_PROTECTED));
        assert_eq!(run(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[], 24, &m, &l).0, Err(Sense::WRITE_PROTECTED));
        // a truncated CDB and an unknown opcode
        assert_eq!(run(&[0x28, 0, 0], &[], 0, &m, &l).0, Err(Sense::INVALID_FIELD_IN_CDB));
        assert_eq!(run(&[0xc0, 0, 0, 0, 0, 0], &[], 0, &m, &l).0, Err(Sense::INVALID_OPCODE));
    }

    #[test]
    fn device_errors_become_medium_errors() {
        let (mut m, l) = mem(8, false);
        m.fail = true;
        assert_eq!(run(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512, &m, &l).0, Err(Sense::READ_ERROR));
        assert_eq!(
            run(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 512, &m, &l).0,
            Err(Sense::SPACE_ALLOCATION_FAILED)
        );
        let s = Sense::READ_ERROR.fixed();
        assert_eq!((s[0], s[2], s[7], s[12], s[13]), (0x70, 3, 10, 0x11, 0));
    }

    #[test]
    fn capacity_inquiry_and_mode_pages() {
        let (m, l) = mem(64, false);
        let (r, out) = run(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8, &m, &l);
        assert_eq!(r, Ok(()));
        assert_eq!(out, [0, 0, 0, 63, 0, 0, 2, 0]);
        let (_, out) = run(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[], 32, &m, &l);
        assert_eq!(be64(&out), 63);
        assert_eq!(out[14] & 0xc0, 0xc0);
        let (_, out) = run(&[0x12, 0, 0, 0, 96, 0], &[], 96, &m, &l);
        assert_eq!(&out[8..16], b"LIO-ORG ");
        assert!(out[36..].iter().all(|&b| b == 0), "the rest of the allocation is zeroed");
        let (_, out) = run(&[0x12, 1, 0, 0, 255, 0], &[], 255, &m, &l);
        assert_eq!(&out[4..10], &[0, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
        let (_, out) = run(&[0x12, 1, 0x80, 0, 255, 0], &[], 255, &m, &l);
        assert_eq!(&out[4..7], b"abc");
        let (_, out) = run(&[0x12, 1, 0x83, 0, 255, 0], &[], 255, &m, &l);
        assert_eq!(out[4..8], [1, 3, 0, 8]);
        assert_eq!(out[8] >> 4, 5);
        let (_, out) = run(&[0x12, 1, 0xb2, 0, 255, 0], &[], 255, &m, &l);
        assert_eq!(out[5] & 0x80, 0x80);
        assert_eq!(run(&[0x12, 1, 0x99, 0, 255, 0], &[], 255, &m, &l).0, Err(Sense::INVALID_FIELD_IN_CDB));
        // MODE SENSE 6, all pages, with a block descriptor: header 4 + desc 8 + caching 20 + control 12
        let (_, out) = run(&[0x1a, 0, 0x3f, 0, 255, 0], &[], 255, &m, &l);
        assert_eq!(out[0] as usize, 4 + 8 + 20 + 12 - 1);
        assert_eq!(out[3], 8);
        assert_eq!(out[12], 0x08);
        assert_eq!(out[14] & 0x04, 0x04, "write cache enabled on a writable device");
        // MODE SENSE 10, caching page, no block descriptor, read-only device sets WP
        let (m, l) = mem(64, true);
        let (_, out) = run(&[0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0], &[], 255, &m, &l);
        assert_eq!(be16(&out) as usize, 8 + 20 - 2);
        assert_eq!(out[3] & 0x80, 0x80);
        assert_eq!(out[8], 0x08);
        assert_eq!(out[10] & 0x04, 0);
    }

    #[test]
    fn unmap_and_write_same() {
        let (m, l) = mem(64, false);
        let mut p = vec![0, 38, 0, 32, 0, 0, 0, 0];
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0]);
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(run(&[0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0], &p, 40, &m, &l).0, Ok(()));
        {
            let b = m.bytes.lock().unwrap();
            assert!(b[1024..2560].iter().all(|&x| x == 0));
            assert!(b[5120..5632].iter().all(|&x| x == 0));
            assert!(b[2560..5120].iter().any(|&x| x != 0));
        }
        // a descriptor past the end changes nothing
        let mut bad = vec![0, 22, 0, 16, 0, 0, 0, 0];
        bad.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 63, 0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(run(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &bad, 24, &m, &l).0, Err(Sense::LBA_OUT_OF_RANGE));
        // WRITE SAME 16 with a pattern, and WRITE SAME 10 with UNMAP
        assert_eq!(run(&[0x93, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0], &[5; 512], 512, &m, &l).0, Ok(()));
        assert!(m.bytes.lock().unwrap()[20 * 512..23 * 512].iter().all(|&x| x == 5));
        assert_eq!(run(&[0x41, 0x08, 0, 0, 0, 21, 0, 0, 1, 0], &[0; 512], 512, &m, &l).0, Ok(()));
        assert!(m.bytes.lock().unwrap()[21 * 512..22 * 512].iter().all(|&x| x == 0));
        assert_eq!(m.bytes.lock().unwrap()[22 * 512], 5);
    }
}
