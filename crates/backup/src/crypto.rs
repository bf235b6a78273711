//! Encryption at rest: XChaCha20-Poly1305 per block, key from a passphrase by Argon2id.
//!
//! ```text
//!   passphrase ──Argon2id(salt, m, t, p)──▶ 256-bit key ──▶ XChaCha20-Poly1305
//!   descriptor: { salt, m, t, p, key_check = AEAD("amberdb-key-check") }   (never the key)
//!   sealed = nonce (24 random bytes) ‖ ciphertext ‖ tag (16)
//! ```
//! What is encrypted: every range-file block and block index (keys and rows), and the
//! manifest body (schemas, key ranges, counts). What is not: the descriptor (KDF
//! parameters and a key check), file names and sizes, and block lengths.
//!
//! Invariants: a wrong passphrase is reported as such (the key check fails) before any
//! data is read; a modified block, index or manifest fails authentication and is named;
//! 192-bit random nonces make nonce reuse under one key negligible without any counter
//! state.

use amberdb_error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

const NONCE_LEN: usize = 24;
const KEY_CHECK: &[u8] = b"amberdb-key-check";

/// A passphrase (or key file contents). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps passphrase bytes; empty passphrases are refused.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let b = bytes.into();
        if b.is_empty() {
            return Err(Error::InvalidInput("the encryption passphrase is empty".into()));
        }
        Ok(Self(b))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// How a destination's key is derived and checked (stored in the descriptor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionParams {
    /// Always `xchacha20poly1305`.
    pub aead: String,
    /// Always `argon2id` (version 0x13).
    pub kdf: String,
    /// Random salt, hex.
    pub salt: String,
    /// Argon2 memory cost in KiB.
    pub m_cost_kib: u32,
    /// Argon2 iterations.
    pub t_cost: u32,
    /// Argon2 lanes.
    pub p_cost: u32,
    /// A known plaintext sealed with the key, hex: tells a wrong passphrase from damage.
    pub key_check: String,
}

/// An encryption key, ready to seal and open.
#[derive(Clone)]
pub struct Cipher {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(…)")
    }
}

fn derive(secret: &Secret, salt: &[u8], m: u32, t: u32, p: u32) -> Result<XChaCha20Poly1305> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| Error::InvalidData(format!("backup encryption parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon
        .hash_password_into(&secret.0, salt, &mut key)
        .map_err(|e| Error::InvalidData(format!("derive backup key: {e}")))?;
    XChaCha20Poly1305::new_from_slice(&key).map_err(|e| Error::Internal(format!("backup key: {e}")))
}

impl Cipher {
    /// A new key for a new destination, with its (public) parameters.
    pub fn create(secret: &Secret) -> Result<(Cipher, EncryptionParams)> {
        let salt: [u8; 16] = rand::random();
        let (m, t, p) = (64 * 1024, 3, 1);
        let cipher = Cipher { aead: derive(secret, &salt, m, t, p)? };
        let check = cipher.seal(b"key-check", KEY_CHECK)?;
        let params = EncryptionParams {
            aead: "xchacha20poly1305".into(),
            kdf: "argon2id".into(),
            salt: crate::to_hex(&salt),
            m_cost_kib: m,
            t_cost: t,
            p_cost: p,
            key_check: crate::to_hex(&check),
        };
        Ok((cipher, params))
    }

    /// The key of an existing destination; a wrong passphrase is a clear error.
    pub fn open(secret: &Secret, params: &EncryptionParams, dest: &str) -> Result<Cipher> {
        if params.aead != "xchacha20poly1305" || params.kdf != "argon2id" {
            return Err(Error::InvalidData(format!(
                "backup {dest} uses {}/{}, which this build does not support",
                params.aead, params.kdf
            )));
        }
        // Bound the work a forged descriptor can demand (4 GiB, 64 passes).
        if params.m_cost_kib > 4 << 20 || params.t_cost > 64 || params.p_cost > 64 {
            return Err(Error::InvalidData(format!("backup {dest}: key derivation parameters are out of range")));
        }
        let salt = crate::from_hex(&params.salt)?;
        let cipher = Cipher { aead: derive(secret, &salt, params.m_cost_kib, params.t_cost, params.p_cost)? };
        let check = crate::from_hex(&params.key_check)?;
        match cipher.open_sealed(b"key-check", &check, "") {
            Ok(plain) if plain == KEY_CHECK => Ok(cipher),
            _ => Err(Error::InvalidInput(format!("wrong encryption passphrase for backup {dest}"))),
        }
    }

    /// Encrypts `plain`, authenticating `aad` too: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ct = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| Error::Internal("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`Cipher::seal`] produced; `what` names the object in errors.
    pub fn open_sealed(&self, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(Error::InvalidData(format!("{what}: encrypted data is truncated")));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.aead.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| {
            Error::InvalidData(format!("{what}: authentication failed (the data was modified or damaged)"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_wrong_key_and_tampering() {
        let s = Secret::new("correct horse").expect("secret");
        let (c, params) = Cipher::create(&s).expect("create");
        let sealed = c.seal(b"aad", b"hello").expect("seal");
        let c2 = Cipher::open(&s, &params, "d").expect("open");
        assert_eq!(c2.open_sealed(b"aad", &sealed, "x").expect("open"), b"hello");
        let wrong = Cipher::open(&Secret::new("battery staple").expect("secret"), &params, "d").unwrap_err();
        assert!(wrong.to_string().contains("wrong encryption passphrase"), "{wrong}");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(c2.open_sealed(b"aad", &bad, "x").is_err(), "flip at {i}");
        }
        assert!(c2.open_sealed(b"other", &sealed, "x").is_err(), "aad is authenticated");
        assert!(Secret::new("").is_err());
        assert_eq!(format!("{s:?}"), "Secret(…)");
    }
}
