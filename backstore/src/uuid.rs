//! Layer UUIDs as overlaybd stores them: 36 upper-case characters and a NUL (spec §2).

use std::fmt;

/// A 16-byte layer UUID. The all-zero value means "none".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LayerUuid(pub [u8; 16]);

impl LayerUuid {
    /// The all-zero UUID, written when a layer has no uuid or parent.
    pub const NIL: LayerUuid = LayerUuid([0; 16]);

    /// A random (version 4) UUID.
    pub fn random() -> Self {
        LayerUuid(*::uuid::Uuid::new_v4().as_bytes())
    }

    /// Parses `8-4-4-4-12` hex (either case). As the reference: valid only if the string is
    /// exactly 36 characters, dashes in place and hex digits elsewhere.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let v = (c as char).to_digit(16)? as u8;
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
            nibbles += 1;
        }
        Some(LayerUuid(out))
    }

    /// Parses the NUL-terminated 37-byte field of an LSMT header; anything unparsable is NIL.
    pub fn from_field(field: &[u8]) -> Self {
        let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
        std::str::from_utf8(&field[..end]).ok().and_then(Self::parse).unwrap_or(Self::NIL)
    }

    /// The 37-byte header field: upper-case string and a NUL.
    pub fn to_field(&self) -> [u8; 37] {
        let mut f = [0u8; 37];
        f[..36].copy_from_slice(self.to_string().as_bytes());
        f
    }

    /// The UUID the convertor derives from an OCI chain ID (`sha256:<64 hex>`): the first 32 hex
    /// digits formatted as `8-4-4-4-12`.
    pub fn from_chain_id(chain_id: &str) -> Option<Self> {
        let hex = chain_id.strip_prefix("sha256:").unwrap_or(chain_id);
        if hex.len() < 32 || !hex.is_char_boundary(32) {
            return None;
        }
        let h = &hex[..32];
        Self::parse(&format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
    }

    /// True for the all-zero UUID.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for LayerUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LayerUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_upper_case() {
        let u = LayerUuid::parse("01bb4fce-3eb1-b56b-05ad-f99504dafd31").unwrap();
        assert_eq!(u.to_string(), "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31");
        assert_eq!(LayerUuid::from_field(&u.to_field()), u);
        assert_eq!(LayerUuid::NIL.to_string(), "00000000-0000-0000-0000-000000000000");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "01bb4fce3eb1b56b05adf99504dafd31",
            "01bb4fce-3eb1-b56b-05ad-f99504dafd3g",
            "01bb4fce-3eb1-b56b-05ad-f99504dafd311",
        ] {
            assert!(LayerUuid::parse(s).is_none(), "{s}");
        }
    }

    #[test]
    fn from_chain_id_as_the_convertor() {
        let u = LayerUuid::from_chain_id("sha256:01bb4fce3eb1b56b05adf99504dafd31907a5aadac736e36b27595c8b92f07f1")
            .unwrap();
        assert_eq!(u.to_string(), "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31");
    }
}
