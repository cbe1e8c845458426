//! Chain IDs (OCI image spec): `chain(0) = diff(0)`, `chain(n) = sha256(chain(n-1) + " " +
//! diff(n))`, and the overlaybd layer UUID of a chain ID (its first 32 hex digits as
//! 8-4-4-4-12), as the reference convertor writes them.

use sha2::{Digest, Sha256};

/// The chain IDs of `diff_ids`, bottom first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

/// The layer UUID the reference derives from a chain ID.
pub fn layer_uuid(chain_id: &str) -> Option<String> {
    let h = chain_id.strip_prefix("sha256:").unwrap_or(chain_id);
    if h.len() < 32 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = vec![format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64))];
        let c = chain_ids(&d);
        assert_eq!(c[0], d[0]);
        let want = hex::encode(Sha256::digest(format!("{} {}", d[0], d[1]).as_bytes()));
        assert_eq!(c[1], format!("sha256:{want}"));
        assert_eq!(layer_uuid(&d[0]).unwrap(), "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa");
        assert!(layer_uuid("sha256:xyz").is_none());
    }
}
