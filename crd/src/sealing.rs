//! Envelope encryption of secret values: the format stored in a Secret's
//! spec, and the only code that seals and opens it.
//!
//! A value is encrypted with a random 256-bit data key (XChaCha20-Poly1305);
//! the data key is *wrapped* to an X25519 public key — ECIES: an ephemeral
//! key pair, HKDF-SHA256 over the shared secret, the same AEAD. Anyone with
//! the public key (the CLI, read from the store) can seal; only the holder of
//! the private key (`--encryption-key-file`, on the controller's machine) can
//! open. Both AEADs take the caller's associated data — the store key of the
//! object — so a ciphertext copied to another secret fails to open.
//!
//! Every wrap names the id of the key it is sealed to ([`WrappedKey::key_id`]),
//! so the cluster key can be rotated: the [`KeyFile`] then holds the new key
//! first and the old ones decrypt-only, [`rewrap`] moves each data key to the
//! new key without touching its ciphertext, and the old keys are retired once
//! nothing is wrapped to them (`shoal cluster-key rotate`).
//!
//! # Guarantees
//! - The plaintext never appears in a [`SealedValue`]; its [`Fingerprint`] is
//!   a salted PBKDF2 digest, used only to tell "same value again" on re-deploy.
//! - Opening fails (never returns garbage) on a wrong key, a wrong store key
//!   or any modified byte.
//!
//! # Caveats
//! - The fingerprint lets a reader of the store test guesses of the value at
//!   PBKDF2 speed ([`FINGERPRINT_ROUNDS`]): values should have real entropy.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

use crate::kinds::Base64Data;

/// PBKDF2-HMAC-SHA256 rounds of a fingerprint.
pub const FINGERPRINT_ROUNDS: u32 = 100_000;
const WRAP_INFO: &[u8] = b"shoal secret data-key wrap v1";
const NONCE_LEN: usize = 24;

/// Why a value could not be opened. Never carries secret material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealingError {
    #[error("sealed with key {0}, which is not in the encryption key file")]
    UnknownKey(String),
    #[error("the sealed data key is malformed")]
    MalformedWrap,
    #[error("authentication failed: the value was modified, moved to another object, or sealed to another key")]
    Authentication,
}

/// A value as stored: ciphertext plus its data key wrapped to one public key.
/// Written by whoever creates the secret (the CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealedValue {
    /// The data key, wrapped to the cluster key with this id.
    pub data_key: WrappedKey,
    /// XChaCha20-Poly1305 nonce of the ciphertext.
    pub nonce: Base64Data,
    /// The value, encrypted with the data key (tag appended).
    pub ciphertext: Base64Data,
    /// Salted slow digest of the value, to recognise an unchanged value.
    pub fingerprint: Fingerprint,
}

/// A data key sealed to one X25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WrappedKey {
    /// Id of the public key it is sealed to.
    pub key_id: String,
    /// Ephemeral public key (32) ‖ nonce (24) ‖ encrypted data key with tag (48).
    pub wrapped: Base64Data,
}

/// PBKDF2-HMAC-SHA256(value, salt, rounds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fingerprint {
    pub salt: Base64Data,
    pub rounds: u32,
    pub digest: Base64Data,
}

impl Fingerprint {
    fn compute(value: &[u8], salt: Vec<u8>, rounds: u32) -> Self {
        let mut digest = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(value, &salt, rounds, &mut digest);
        Fingerprint { salt: Base64Data(salt), rounds, digest: Base64Data(digest.to_vec()) }
    }

    /// Whether `value` is the value this fingerprint was made from.
    pub fn matches(&self, value: &[u8]) -> bool {
        Fingerprint::compute(value, self.salt.0.clone(), self.rounds).digest == self.digest
    }
}

/// An X25519 public key and its id (the first 8 bytes of its SHA-256, hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicKey {
    pub key_id: String,
    pub public_key: Base64Data,
}

impl PublicKey {
    fn point(&self) -> Result<XPublic, SealingError> {
        let bytes: [u8; 32] = self.public_key.0.as_slice().try_into().map_err(|_| SealingError::MalformedWrap)?;
        Ok(XPublic::from(bytes))
    }
}

/// A private key with its id; the private half never leaves its file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivateKey {
    pub key_id: String,
    private_key: Base64Data,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// A new random key pair.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        let public = XPublic::from(&StaticSecret::from(bytes));
        PrivateKey { key_id: key_id(public.as_bytes()), private_key: Base64Data(bytes.to_vec()) }
    }

    fn secret(&self) -> StaticSecret {
        let bytes: [u8; 32] = self.private_key.0.as_slice().try_into().expect("a private key is 32 bytes");
        StaticSecret::from(bytes)
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        let public = XPublic::from(&self.secret());
        PublicKey { key_id: self.key_id.clone(), public_key: Base64Data(public.as_bytes().to_vec()) }
    }
}

fn key_id(public: &[u8]) -> String {
    Sha256::digest(public)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn random_nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

fn aead(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

/// Encrypts `value` under a fresh data key wrapped to `to`, bound to `aad`.
pub fn seal(to: &PublicKey, aad: &[u8], value: &[u8]) -> Result<SealedValue, SealingError> {
    let data_key: [u8; 32] = rand::random();
    let nonce = random_nonce();
    let ciphertext = aead(&data_key)
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: value, aad })
        .map_err(|_| SealingError::Authentication)?;
    Ok(SealedValue {
        data_key: wrap(to, aad, &data_key)?,
        nonce: Base64Data(nonce.to_vec()),
        ciphertext: Base64Data(ciphertext),
        fingerprint: Fingerprint::compute(value, rand::random::<[u8; 16]>().to_vec(), FINGERPRINT_ROUNDS),
    })
}

/// Decrypts `sealed` with whichever of `keys` its data key is wrapped to.
pub fn open(keys: &[PrivateKey], aad: &[u8], sealed: &SealedValue) -> Result<Vec<u8>, SealingError> {
    let data_key = unwrap(keys, aad, &sealed.data_key)?;
    open_with(&data_key, aad, sealed)
}

/// Decrypts `sealed` with a data key unwrapped from another copy (a node's).
pub fn open_with_wrapped(
    keys: &[PrivateKey],
    aad: &[u8],
    wrapped: &WrappedKey,
    sealed: &SealedValue,
) -> Result<Vec<u8>, SealingError> {
    let data_key = unwrap(keys, aad, wrapped)?;
    open_with(&data_key, aad, sealed)
}

fn open_with(data_key: &[u8; 32], aad: &[u8], sealed: &SealedValue) -> Result<Vec<u8>, SealingError> {
    let nonce: [u8; NONCE_LEN] = sealed.nonce.0.as_slice().try_into().map_err(|_| SealingError::MalformedWrap)?;
    aead(data_key)
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed.ciphertext.0, aad })
        .map_err(|_| SealingError::Authentication)
}

/// Re-wraps the data key of `sealed` to another public key (a node's, or a
/// new cluster key during rotation) without touching the ciphertext.
pub fn rewrap(keys: &[PrivateKey], aad: &[u8], from: &WrappedKey, to: &PublicKey) -> Result<WrappedKey, SealingError> {
    let data_key = unwrap(keys, aad, from)?;
    wrap(to, aad, &data_key)
}

fn wrap(to: &PublicKey, aad: &[u8], data_key: &[u8; 32]) -> Result<WrappedKey, SealingError> {
    let ephemeral = StaticSecret::from(rand::random::<[u8; 32]>());
    let ephemeral_public = XPublic::from(&ephemeral);
    let recipient = to.point()?;
    let kek = wrapping_key(&ephemeral.diffie_hellman(&recipient).to_bytes(), &ephemeral_public, &recipient);
    let nonce = random_nonce();
    let sealed_key = aead(&kek)
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: data_key, aad })
        .map_err(|_| SealingError::Authentication)?;
    let mut wrapped = ephemeral_public.as_bytes().to_vec();
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&sealed_key);
    Ok(WrappedKey { key_id: to.key_id.clone(), wrapped: Base64Data(wrapped) })
}

fn unwrap(keys: &[PrivateKey], aad: &[u8], from: &WrappedKey) -> Result<[u8; 32], SealingError> {
    let key =
        keys.iter().find(|k| k.key_id == from.key_id).ok_or_else(|| SealingError::UnknownKey(from.key_id.clone()))?;
    let bytes = &from.wrapped.0;
    if bytes.len() != 32 + NONCE_LEN + 48 {
        return Err(SealingError::MalformedWrap);
    }
    let ephemeral_public = XPublic::from(<[u8; 32]>::try_from(&bytes[..32]).expect("length checked"));
    let secret = key.secret();
    let recipient = XPublic::from(&secret);
    let kek = wrapping_key(&secret.diffie_hellman(&ephemeral_public).to_bytes(), &ephemeral_public, &recipient);
    let plain = aead(&kek)
        .decrypt(XNonce::from_slice(&bytes[32..32 + NONCE_LEN]), Payload { msg: &bytes[32 + NONCE_LEN..], aad })
        .map_err(|_| SealingError::Authentication)?;
    plain.as_slice().try_into().map_err(|_| SealingError::MalformedWrap)
}

/// HKDF-SHA256(shared, salt = ephemeral ‖ recipient public keys).
fn wrapping_key(shared: &[u8; 32], ephemeral: &XPublic, recipient: &XPublic) -> [u8; 32] {
    let mut salt = ephemeral.as_bytes().to_vec();
    salt.extend_from_slice(recipient.as_bytes());
    let mut kek = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), shared).expand(WRAP_INFO, &mut kek).expect("32 bytes is a valid HKDF length");
    kek
}

/// The `--encryption-key-file`: the cluster's private keys, the current one
/// (that new values are sealed to) first. Any further keys are decrypt-only:
/// they are held only while a rotation ([`KeyFile::begin_rotation`]) is
/// unfinished, to open values not yet re-wrapped to the current key, and
/// dropped by [`KeyFile::retire_old`] once none is left.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyFile {
    pub keys: Vec<PrivateKey>,
}

impl KeyFile {
    /// The key new values are sealed to.
    pub fn current(&self) -> &PrivateKey {
        &self.keys[0]
    }

    /// Whether a rotation is unfinished: the file still holds older keys.
    pub fn is_rotating(&self) -> bool {
        self.keys.len() > 1
    }

    /// Makes a new key current; the others become decrypt-only.
    pub fn begin_rotation(&mut self) -> &PrivateKey {
        self.keys.insert(0, PrivateKey::generate());
        self.current()
    }

    /// Drops every key but the current one; returns the ids it dropped.
    pub fn retire_old(&mut self) -> Vec<String> {
        self.keys.drain(1..).map(|k| k.key_id).collect()
    }

    /// Reads an existing key file.
    pub fn load(path: &std::path::Path) -> std::io::Result<KeyFile> {
        let bytes = std::fs::read(path)?;
        // The position only: serde's message could quote bytes of a key.
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| {
            let at = format!("line {}, column {}", e.line(), e.column());
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a Shoal key file ({at})", path.display()),
            )
        })?;
        if file.keys.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: holds no key", path.display()),
            ));
        }
        Ok(file)
    }

    /// Reads the key file, creating it (mode 0600, one new key) if absent.
    pub fn load_or_create(path: &std::path::Path) -> std::io::Result<KeyFile> {
        match KeyFile::load(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = KeyFile { keys: vec![PrivateKey::generate()] };
                file.save(path)?;
                Ok(file)
            }
            other => other,
        }
    }

    /// Writes the file with mode 0600 (replacing it atomically).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        out.write_all(&serde_json::to_vec_pretty(self).expect("key files serialize"))?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// Base64 of bytes (for messages and keys outside serde).
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"/shoal/secrets/db-password";

    #[test]
    fn a_sealed_value_opens_with_the_private_key_only() {
        let key = PrivateKey::generate();
        let sealed = seal(&key.public(), AAD, b"passw0rD123").unwrap();
        assert_eq!(open(std::slice::from_ref(&key), AAD, &sealed).unwrap(), b"passw0rD123");
        let other = PrivateKey::generate();
        assert_eq!(open(&[other], AAD, &sealed), Err(SealingError::UnknownKey(key.key_id.clone())));
    }

    #[test]
    fn the_plaintext_appears_nowhere_in_the_stored_form() {
        let key = PrivateKey::generate();
        let sealed = seal(&key.public(), AAD, b"very secret value").unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains("very secret value"));
        assert!(!json.contains(&base64(b"very secret value")));
    }

    #[test]
    fn a_ciphertext_moved_to_another_object_fails_to_open() {
        let key = PrivateKey::generate();
        let sealed = seal(&key.public(), AAD, b"x").unwrap();
        let moved = open(&[key], b"/shoal/secrets/other", &sealed);
        assert_eq!(moved, Err(SealingError::Authentication));
    }

    #[test]
    fn any_flipped_byte_fails_authentication() {
        let key = PrivateKey::generate();
        let mut sealed = seal(&key.public(), AAD, b"value").unwrap();
        sealed.ciphertext.0[0] ^= 1;
        assert_eq!(open(std::slice::from_ref(&key), AAD, &sealed), Err(SealingError::Authentication));
        let mut sealed = seal(&key.public(), AAD, b"value").unwrap();
        sealed.data_key.wrapped.0[40] ^= 1;
        assert_eq!(open(&[key], AAD, &sealed), Err(SealingError::Authentication));
    }

    #[test]
    fn rewrapping_to_a_node_key_opens_with_the_node_key() {
        let cluster = PrivateKey::generate();
        let node = PrivateKey::generate();
        let sealed = seal(&cluster.public(), AAD, b"for node").unwrap();
        let for_node = rewrap(&[cluster], AAD, &sealed.data_key, &node.public()).unwrap();
        assert_eq!(for_node.key_id, node.key_id);
        assert_eq!(open_with_wrapped(&[node], AAD, &for_node, &sealed).unwrap(), b"for node");
    }

    #[test]
    fn a_fingerprint_recognises_the_same_value_only() {
        let key = PrivateKey::generate();
        let sealed = seal(&key.public(), AAD, b"one").unwrap();
        assert!(sealed.fingerprint.matches(b"one"));
        assert!(!sealed.fingerprint.matches(b"two"));
    }

    #[test]
    fn the_key_file_is_created_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secrets.key");
        let created = KeyFile::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let read = KeyFile::load_or_create(&path).unwrap();
        assert_eq!(read.current().key_id, created.current().key_id);
        assert_eq!(read.current().public(), created.current().public());
        assert!(!format!("{:?}", read.current()).contains("private_key"));
    }

    #[test]
    fn a_rotation_rewraps_to_the_new_key_and_old_keys_open_until_retired() {
        let mut file = KeyFile { keys: vec![PrivateKey::generate()] };
        let old = file.current().clone();
        let sealed = seal(&old.public(), AAD, b"kept").unwrap();
        let new = file.begin_rotation().clone();
        assert!(file.is_rotating());
        assert_eq!(open(&file.keys, AAD, &sealed).unwrap(), b"kept", "old keys stay decrypt-only");
        let rewrapped =
            SealedValue { data_key: rewrap(&file.keys, AAD, &sealed.data_key, &new.public()).unwrap(), ..sealed };
        assert_eq!(rewrapped.data_key.key_id, new.key_id);
        assert_eq!(file.retire_old(), std::slice::from_ref(&old.key_id));
        assert!(!file.is_rotating());
        assert_eq!(open(&file.keys, AAD, &rewrapped).unwrap(), b"kept", "the same ciphertext, a new wrap");
    }

    #[test]
    fn a_key_file_from_before_rotations_existed_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let key = PrivateKey::generate();
        let legacy =
            format!(r#"{{"keys":[{{"keyId":"{}","privateKey":"{}"}}]}}"#, key.key_id, base64(&key.private_key.0));
        std::fs::write(&path, legacy).unwrap();
        let file = KeyFile::load(&path).unwrap();
        assert_eq!(file.current().public(), key.public());
        assert!(!file.is_rotating());
    }
}
