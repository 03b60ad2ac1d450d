//! Security primitives (SHA-256 hex, constant-time comparison) and security_report (docs/reference.md, "Monitoring and checks").
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pgrx::extension_sql_file!(
    "../sql/security_report.sql",
    name = "security_report",
    requires = ["schema"]
);

/// Lowercase hex of the SHA-256 of `data` (64 characters).
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    out
}

/// Compares two byte strings in time that depends only on their lengths, never on where
/// they differ: for secrets, their hashes and one-time codes. The one comparison of secrets
/// in truxe, over the RustCrypto ecosystem's `subtle` (no hand-written constant-time code).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn sha256_hex_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"sama"));
        assert!(!constant_time_eq(b"same", b"same+"));
        assert!(constant_time_eq(b"", b""));
    }
}
