//! Secrets at rest: the key file, AES-256-GCM bound to a row, and the OS random source.
//!
//! The key file (`truxe.encryption_key_file`, a superuser-only setting) holds one key a
//! line, `<key id>:<32 bytes as 64 hex digits>`; blank lines and lines starting with `#`
//! are ignored. The last key encrypts; every key decrypts. Keys live only in this module:
//! no key, and no line of the file, ever reaches a setting, a table, an error message or a
//! log line (errors name the line number, never its text).
//!
//! **One place loads keys: [`key_ring`].** It caches the parsed file per backend, keyed by
//! the file's path, inode, modification time and size (one `stat` per call): editing or replacing
//! the file (rotation) takes effect at the next call of every backend, without a reload.
//!
//! Each key also yields an **audit sealing key** ([`SealKey`], src/seal.rs): HMAC-SHA-256 of the
//! key over a fixed label, so that the audit chain's MACs and the AES-GCM encryption never
//! use the same key for two purposes.
//!
//! Every value is sealed with a fresh random 96-bit nonce and associated data that binds
//! it to its row — table, row id and owner id ([`Binding`]) — so a ciphertext copied onto
//! another row, or another owner's row, does not decrypt (XX001).
use crate::error::{quote_input, Sqlstate, TruxeError};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hmac::{Hmac, Mac};
use pgrx::{pg_sys, Uuid};
use rand::TryRngCore;
use sha2::Sha256;
use std::cell::RefCell;
use std::ffi::CStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;
use zeroize::Zeroizing;

/// Bytes of an AES-GCM nonce (96 bits, as NIST SP 800-38D recommends for random nonces).
pub const NONCE_LEN: usize = 12;
/// The longest key id accepted in the key file.
const MAX_KEY_ID: usize = 64;

/// What a ciphertext is bound to: the table, the row's id and the row's owner (org or
/// user). Part of the associated data, not of the ciphertext.
pub struct Binding {
    pub table: &'static str,
    pub row_id: Uuid,
    pub owner_id: Uuid,
}

impl Binding {
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(16 + self.table.len() + 34);
        aad.extend_from_slice(b"truxe/v1/");
        aad.extend_from_slice(self.table.as_bytes());
        aad.push(b'/');
        aad.extend_from_slice(self.row_id.as_bytes());
        aad.push(b'/');
        aad.extend_from_slice(self.owner_id.as_bytes());
        aad
    }
}

/// A sealed value as stored: the id of the key that sealed it, its nonce, and the
/// ciphertext with its 16-byte GCM tag.
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The keys of the key file, in file order (the last one encrypts). The ciphers hold the
/// expanded keys and wipe them when dropped (aes-gcm's `zeroize` feature), as do the
/// audit sealing keys.
pub struct KeyRing {
    keys: Vec<(String, Aes256Gcm)>,
    seal_keys: Vec<SealKey>,
    claim_keys: Vec<SealKey>,
}

type HmacSha256 = Hmac<Sha256>;

/// The label the audit sealing key is derived under (a domain-separated HMAC: the key
/// file's key is the HMAC key, the label the message). A new derivation gets a new label.
const SEAL_KEY_LABEL: &[u8] = b"truxe/v1/audit-seal-key";
/// The message whose MAC under a sealing key is that key's check value.
const KEY_CHECK_LABEL: &[u8] = b"truxe/v1/audit-seal-key-check";
/// The label the Citus claim key is derived under (src/claim.rs): the same construction as
/// the audit sealing key, under another label, so that a claim's MAC is never an audit
/// seal's and neither is usable for the other.
const CLAIM_KEY_LABEL: &[u8] = b"truxe/v1/citus-claim-key";
/// Bytes of a key check value (identifies a key, proves nothing: see [`SealKey::check_value`]).
pub const KEY_CHECK_LEN: usize = 8;

/// The audit sealing key of one line of the key file: HMAC-SHA-256(key, label). Never
/// leaves this module except as a MAC or a check value.
pub struct SealKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl SealKey {
    fn derive(id: &str, key: &[u8; 32], label: &[u8]) -> SealKey {
        let mut derived = Zeroizing::new([0u8; 32]);
        derived.copy_from_slice(&hmac_sha256(key, label));
        SealKey {
            id: id.to_string(),
            key: derived,
        }
    }

    /// The id of the key file line this key comes from.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// HMAC-SHA-256 of `message` under this key.
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.key[..], message)
    }

    /// Whether `tag` is the MAC of `message` under this key (constant time).
    pub fn verifies(&self, message: &[u8], tag: &[u8]) -> bool {
        let Ok(mut m) = <HmacSha256 as Mac>::new_from_slice(&self.key[..]) else {
            return false;
        };
        m.update(message);
        m.verify_slice(tag).is_ok()
    }

    /// The first [`KEY_CHECK_LEN`] bytes of the MAC of a fixed label: stored beside each
    /// seal so that verification can tell "another key under the same id" from "an altered
    /// seal". It reveals nothing usable about the key (a MAC of a public constant).
    pub fn check_value(&self) -> [u8; KEY_CHECK_LEN] {
        let mut out = [0u8; KEY_CHECK_LEN];
        out.copy_from_slice(&self.mac(KEY_CHECK_LABEL)[..KEY_CHECK_LEN]);
        out
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: new_from_slice cannot fail
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(message);
    m.finalize().into_bytes().into()
}

impl KeyRing {
    /// The key that encrypts: the last line's.
    pub fn current(&self) -> (&str, &Aes256Gcm) {
        let (id, cipher) = self.keys.last().expect("a key ring is never empty");
        (id, cipher)
    }

    /// The audit sealing key of the key that encrypts (the last line's).
    pub fn current_seal_key(&self) -> &SealKey {
        self.seal_keys.last().expect("a key ring is never empty")
    }

    /// The Citus claim key (src/claim.rs) of the key that encrypts (the last line's): an
    /// HMAC key derived as the audit sealing key is, under its own label.
    pub fn current_claim_key(&self) -> &SealKey {
        self.claim_keys.last().expect("a key ring is never empty")
    }

    /// The Citus claim key of line `key_id`, if the file holds it.
    pub fn claim_key(&self, key_id: &str) -> Option<&SealKey> {
        self.claim_keys.iter().find(|k| k.id == key_id)
    }

    /// The audit sealing key of line `key_id`, if the file holds it.
    pub fn seal_key(&self, key_id: &str) -> Option<&SealKey> {
        self.seal_keys.iter().find(|k| k.id == key_id)
    }

    fn get(&self, key_id: &str) -> Option<&Aes256Gcm> {
        self.keys
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, c)| c)
    }

    /// Seals `plaintext` for `binding` under the current key, with a fresh random nonce.
    pub fn seal(&self, binding: &Binding, plaintext: &[u8]) -> Result<Sealed, TruxeError> {
        let (key_id, cipher) = self.current();
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        let aad = binding.associated_data();
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| TruxeError::new(Sqlstate::Internal, "AES-GCM encryption failed"))?;
        Ok(Sealed {
            key_id: key_id.to_string(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a value sealed for `binding`. 55000 when the key file lacks `key_id`; XX001
    /// when the ciphertext does not verify (altered, or copied from another row).
    pub fn open(
        &self,
        binding: &Binding,
        key_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TruxeError> {
        let Some(cipher) = self.get(key_id) else {
            return Err(TruxeError::new(
                Sqlstate::NotInPrerequisiteState,
                format!(
                    "a row of truxe.{} is encrypted with key {}, which the key file \
                     (truxe.encryption_key_file) does not hold: put that key's line back \
                     (docs/security.md, Encryption keys)",
                    binding.table,
                    quote_input(key_id)
                ),
            ));
        };
        let corrupted = || {
            TruxeError::new(
                Sqlstate::DataCorrupted,
                format!(
                    "the encrypted value of truxe.{} row {} does not decrypt: it was altered \
                     or copied from another row",
                    binding.table, binding.row_id
                ),
            )
        };
        if nonce.len() != NONCE_LEN {
            return Err(corrupted());
        }
        let aad = binding.associated_data();
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| corrupted())
    }
}

/// Whether `truxe.encryption_key_file` is set (not whether the file is usable).
pub fn key_file_configured() -> bool {
    key_file_setting().is_some()
}

/// `truxe.encryption_key_file`, when set and not empty.
fn key_file_setting() -> Option<String> {
    let value = crate::gucs::ENCRYPTION_KEY_FILE.get()?;
    let text = value.to_str().ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn not_configured(what: String) -> TruxeError {
    TruxeError::new(
        Sqlstate::NotInPrerequisiteState,
        format!(
            "{what}: a superuser must set truxe.encryption_key_file to a file outside the data \
             directory, readable by the server, with one key a line as <key id>:<64 hex digits> \
             (docs/security.md, Encryption keys)"
        ),
    )
}

struct Cached {
    path: String,
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
    ring: Rc<KeyRing>,
}

thread_local! {
    static CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// The keys of the configured key file: from this backend's cache while the file's path,
/// modification time and size are unchanged, else read and parsed again. 55000 when no
/// file is configured, it cannot be read, lies inside the data directory, or is malformed.
pub fn key_ring() -> Result<Rc<KeyRing>, TruxeError> {
    let Some(path) = key_file_setting() else {
        return Err(not_configured(
            "no encryption key is configured".to_string(),
        ));
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        not_configured(format!(
            "cannot read the key file {} ({})",
            quote_input(&path),
            e.kind()
        ))
    })?;
    let modified = meta.modified().ok();
    let hit = CACHE.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|k| {
                k.path == path
                    && k.inode == meta.ino()
                    && k.modified == modified
                    && k.len == meta.len()
            })
            .map(|k| k.ring.clone())
    });
    if let Some(ring) = hit {
        return Ok(ring);
    }
    refuse_inside_data_directory(&path)?;
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
        not_configured(format!(
            "cannot read the key file {} ({})",
            quote_input(&path),
            e.kind()
        ))
    })?);
    let ring = Rc::new(parse_key_file(&text).map_err(not_configured)?);
    CACHE.with(|c| {
        *c.borrow_mut() = Some(Cached {
            path,
            inode: meta.ino(),
            modified,
            len: meta.len(),
            ring: ring.clone(),
        })
    });
    Ok(ring)
}

/// A key file inside the data directory would travel with every base backup and file-level
/// copy of the database: refused (55000).
fn refuse_inside_data_directory(path: &str) -> Result<(), TruxeError> {
    // SAFETY: DataDir is set once at server start (a NUL-terminated path) and never freed.
    let data_dir = unsafe {
        let dir = pg_sys::DataDir;
        if dir.is_null() {
            return Ok(());
        }
        CStr::from_ptr(dir).to_string_lossy().into_owned()
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    if canonical(Path::new(path)).starts_with(canonical(Path::new(&data_dir))) {
        return Err(not_configured(format!(
            "the key file {} is inside the data directory, where every backup copies it",
            quote_input(path)
        )));
    }
    Ok(())
}

/// Parses the key file's text. The error names the line, never its content.
pub fn parse_key_file(text: &str) -> Result<KeyRing, String> {
    let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
    let mut seal_keys: Vec<SealKey> = Vec::new();
    let mut claim_keys: Vec<SealKey> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || {
            format!(
                "line {} of the key file is malformed: expected <key id>:<64 hex digits>, the key \
                 id 1-{MAX_KEY_ID} letters, digits, '.', '_' or '-'",
                n + 1
            )
        };
        let (id, hex) = line.split_once(':').ok_or_else(malformed)?;
        let id_ok = (1..=MAX_KEY_ID).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok || hex.len() != 64 {
            return Err(malformed());
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => key[i] = (hi << 4 | lo) as u8,
                _ => return Err(malformed()),
            }
        }
        if keys.iter().any(|(k, _)| k == id) {
            return Err(format!(
                "line {} of the key file repeats the key id of an earlier line",
                n + 1
            ));
        }
        let cipher = Aes256Gcm::new_from_slice(&key[..]).map_err(|_| malformed())?;
        keys.push((id.to_string(), cipher));
        seal_keys.push(SealKey::derive(id, &key, SEAL_KEY_LABEL));
        claim_keys.push(SealKey::derive(id, &key, CLAIM_KEY_LABEL));
    }
    if keys.is_empty() {
        return Err("the key file holds no key".to_string());
    }
    Ok(KeyRing {
        keys,
        seal_keys,
        claim_keys,
    })
}

/// `N` bytes from the OS random source (XX000 if it fails).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], TruxeError> {
    let mut b = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|_| TruxeError::new(Sqlstate::Internal, "the OS random source failed"))?;
    Ok(b)
}

/// A version-7 uuid: the wall clock's milliseconds, then 74 random bits from the OS source.
/// For a session's public id (not a credential): new rows' ids sort after older ones, so a
/// new id goes into the right edge of its btree instead of a random leaf (bench/README.md,
/// "Performance work after the 0.2 run"); the clock it shows is the row's created_at anyway.
pub fn new_time_ordered_uuid() -> Result<Uuid, TruxeError> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let v7 = uuid::Builder::from_unix_timestamp_millis(millis, &random_bytes()?).into_uuid();
    Ok(Uuid::from_bytes(v7.into_bytes()))
}

/// A random version-4 uuid (a row id that must be known before its value is sealed).
pub fn new_uuid() -> Result<Uuid, TruxeError> {
    let mut b: [u8; 16] = random_bytes()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(Uuid::from_bytes(b))
}

#[cfg(test)]
mod unit {
    use super::*;

    const K1: &str = "0000000000000000000000000000000000000000000000000000000000000001";
    const K2: &str = "ABCDEF0000000000000000000000000000000000000000000000000000000002";

    fn binding(row: u8, owner: u8) -> Binding {
        Binding {
            table: "secrets",
            row_id: Uuid::from_bytes([row; 16]),
            owner_id: Uuid::from_bytes([owner; 16]),
        }
    }

    #[test]
    fn key_file_format() {
        let ring = parse_key_file(&format!("# old\nk1:{K1}\n\n  k2:{K2}  \r\n")).unwrap();
        assert_eq!(ring.current().0, "k2");
        for bad in [
            String::new(),
            "# only a comment".into(),
            format!("k1{K1}"),
            format!(":{K1}"),
            format!("k 1:{K1}"),
            format!("k1:{}", &K1[1..]),
            format!("k1:{K1}0"),
            format!("k1:{}g", &K1[1..]),
            format!("k1:{K1}\nk1:{K2}"),
            format!("{}:{K1}", "k".repeat(65)),
        ] {
            let err = parse_key_file(&bad).err().expect(&bad);
            assert!(!err.contains(&K1[..20]), "{err}");
        }
    }

    #[test]
    fn audit_sealing_keys_are_derived_per_line_and_apart_from_the_key() {
        let ring = parse_key_file(&format!("k1:{K1}\nk2:{K2}")).unwrap();
        assert_eq!(ring.current_seal_key().id(), "k2");
        let k1 = ring.seal_key("k1").unwrap();
        assert!(ring.seal_key("k3").is_none());
        // the derivation: HMAC-SHA-256(key, label), then HMAC-SHA-256 under that
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&K1[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let derived = hmac_sha256(&raw, SEAL_KEY_LABEL);
        assert_ne!(&derived[..], &raw[..]);
        assert_eq!(k1.mac(b"m"), hmac_sha256(&derived, b"m"));
        assert_ne!(
            k1.mac(b"m"),
            hmac_sha256(&raw, b"m"),
            "never the file's key itself"
        );
        assert!(k1.verifies(b"m", &k1.mac(b"m")));
        assert!(!k1.verifies(b"n", &k1.mac(b"m")));
        assert!(!ring.current_seal_key().verifies(b"m", &k1.mac(b"m")));
        assert_ne!(k1.check_value(), ring.current_seal_key().check_value());
        // RFC 4231 test case 2: the HMAC primitive itself
        assert_eq!(
            crate::security::to_hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sealed_values_open_only_on_their_row_and_with_their_key() {
        let old = parse_key_file(&format!("k1:{K1}")).unwrap();
        let both = parse_key_file(&format!("k1:{K1}\nk2:{K2}")).unwrap();
        let s = old.seal(&binding(1, 2), b"hunter2").unwrap();
        assert_eq!(s.key_id, "k1");
        assert_eq!(s.nonce.len(), NONCE_LEN);
        assert!(!s.ciphertext.windows(7).any(|w| w == b"hunter2"));
        let opened = both
            .open(&binding(1, 2), &s.key_id, &s.nonce, &s.ciphertext)
            .unwrap();
        assert_eq!(&opened[..], b"hunter2");
        for other in [binding(3, 2), binding(1, 3)] {
            let e = both
                .open(&other, &s.key_id, &s.nonce, &s.ciphertext)
                .err()
                .unwrap();
            assert_eq!(e.state, Sqlstate::DataCorrupted);
        }
        let e = parse_key_file(&format!("k2:{K2}"))
            .unwrap()
            .open(&binding(1, 2), "k1", &s.nonce, &s.ciphertext)
            .err()
            .unwrap();
        assert_eq!(e.state, Sqlstate::NotInPrerequisiteState);
        let again = old.seal(&binding(1, 2), b"hunter2").unwrap();
        assert_ne!(again.nonce, s.nonce, "a fresh nonce per value");
    }
}
