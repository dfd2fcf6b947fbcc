//! Message authenticity: canonical signing bytes, HMAC-SHA256, replay and
//! freshness protection.
//!
//! Signing is mandatory in Esper: there is no "unsigned mode". The signature covers
//! the message's full proto name (domain separation, so the bytes of one message
//! type can never pass as another), a NUL, then the message's bytes *as
//! transmitted* with the signature field's records cut out ([`wire`],
//! `docs/SIGNING.md`, test vectors in `proto/signing/`). A producer encodes
//! the message without a signature, MACs that, and appends the signature field;
//! a receiver of bytes ([`signature_valid_encoded`], [`Verifier::verify_encoded`])
//! never re-encodes, so fields it does not know, or another library's
//! encoding choices, do not break verification. The signature field is the
//! highest-numbered field of every signed message, so prost's encoding of a
//! signed message is exactly `M ‖ signature record` and [`sign`] and
//! [`signature_valid`] (for a message in hand, built by this code) agree with it.
//!
//! A receiver runs [`Verifier::verify`], which checks, in this order: the signature
//! (constant-time), the id, freshness (not issued in the future beyond the allowed
//! skew, not older than the window), and only then burns the id in the
//! [`NonceLedger`]; a message rejected early never consumes its nonce.
//!
//! ```
//! use leyline::security::{sign, SigningKey, Verifier};
//! use leyline::v1::AdaptationCommand;
//! use leyline::SecurityConfig;
//!
//! let key = SigningKey::generate().unwrap();
//! let now = leyline::unix_now_ms();
//! let mut cmd = AdaptationCommand {
//!     command_id: leyline::new_id(),
//!     issued_at_ms: now,
//!     ..Default::default()
//! };
//! sign(&key, &mut cmd);
//! let mut verifier = Verifier::new(key, &SecurityConfig::default());
//! assert!(verifier.verify(&cmd, now).is_ok());
//! // The same command again is a replay.
//! assert!(verifier.verify(&cmd, now).is_err());
//! ```

mod ledger;
mod verifier;
pub mod wire;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::v1::{AdaptationCommand, BusEnvelope, EmergencySignal, PolicyUpdate};

pub use ledger::NonceLedger;
pub use verifier::{Rejection, VerificationStats, Verifier};

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted secret, in bytes (the HMAC-SHA256 output size).
pub const MIN_SECRET_BYTES: usize = 32;

/// A shared HMAC secret, keyed once. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct SigningKey {
    // The keyed MAC state; cloning it is cheaper than re-deriving it from the key.
    mac: HmacSha256,
    len: usize,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} bytes, redacted)", self.len)
    }
}

impl SigningKey {
    /// A key from raw bytes; at least [`MIN_SECRET_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(Error::InvalidSecret(format!(
                "{} bytes is too short, at least {MIN_SECRET_BYTES} are required",
                bytes.len()
            )));
        }
        let mac = <HmacSha256 as Mac>::new_from_slice(bytes)
            .map_err(|e| Error::InvalidSecret(format!("HMAC rejected the key: {e}")))?;
        Ok(Self {
            mac,
            len: bytes.len(),
        })
    }

    /// A key from a hex string (surrounding whitespace ignored), e.g. the output of
    /// `openssl rand -hex 32`.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        if !text.len().is_multiple_of(2) {
            return Err(Error::InvalidSecret(
                "hex secret has an odd number of digits".into(),
            ));
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| {
                        Error::InvalidSecret(format!("not a hex digit pair at offset {i}"))
                    })
            })
            .collect::<Result<Vec<u8>>>()?;
        Self::from_bytes(&bytes)
    }

    /// A fresh random 32-byte key from the operating system.
    pub fn generate() -> Result<Self> {
        let mut key = vec![0u8; MIN_SECRET_BYTES];
        getrandom::fill(&mut key).map_err(Error::Random)?;
        Self::from_bytes(&key)
    }

    fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }
}

/// A Leyline message that carries its own signature and replay nonce.
pub trait Signed: prost::Message + prost::Name + Clone {
    /// The signature bytes (empty when unsigned).
    fn signature(&self) -> &[u8];
    /// Replaces the signature.
    fn set_signature(&mut self, signature: Vec<u8>);
    /// The unique id, which is also the replay nonce.
    fn nonce(&self) -> &str;
    /// Wall-clock issue time, Unix epoch milliseconds (0 = missing).
    fn issued_at_ms(&self) -> u64;
    /// The field number of `signature` (the message's highest).
    const SIGNATURE_FIELD: u32;
}

macro_rules! impl_signed {
    ($ty:ty, $id:ident, $at:ident, $field:literal) => {
        impl Signed for $ty {
            const SIGNATURE_FIELD: u32 = $field;
            fn signature(&self) -> &[u8] {
                &self.signature
            }
            fn set_signature(&mut self, signature: Vec<u8>) {
                self.signature = signature;
            }
            fn nonce(&self) -> &str {
                &self.$id
            }
            fn issued_at_ms(&self) -> u64 {
                self.$at
            }
        }
    };
}

impl_signed!(AdaptationCommand, command_id, issued_at_ms, 30);
impl_signed!(BusEnvelope, message_id, issued_at_ms, 15);
impl_signed!(EmergencySignal, signal_id, triggered_at_ms, 15);
impl_signed!(PolicyUpdate, policy_id, issued_at_ms, 15);

/// The bytes a signature covers: full proto name, a NUL, then the canonical
/// encoding of the message with its signature cleared.
pub fn signing_bytes<M: Signed>(message: &M) -> Vec<u8> {
    let mut unsigned = message.clone();
    unsigned.set_signature(Vec::new());
    let name = M::full_name();
    let mut bytes = Vec::with_capacity(name.len() + 1 + unsigned.encoded_len());
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    unsigned.encode_raw(&mut bytes);
    bytes
}

/// The bytes a signature covers and the signature itself, read from `encoded`
/// — an `M` as transmitted — without decoding or re-encoding it.
pub fn signing_bytes_encoded<M: Signed>(encoded: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let (rest, signature) =
        wire::split_signature(encoded, M::SIGNATURE_FIELD).map_err(|source| Error::Wire {
            message: M::full_name(),
            len: encoded.len(),
            source,
        })?;
    let name = M::full_name();
    let mut bytes = Vec::with_capacity(name.len() + 1 + rest.len());
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&rest);
    Ok((bytes, signature))
}

/// Whether `encoded` (an `M` as transmitted) carries a valid signature under
/// `key` (constant-time compare). Unparsable bytes are not valid.
pub fn signature_valid_encoded<M: Signed>(key: &SigningKey, encoded: &[u8]) -> bool {
    let Ok((bytes, signature)) = signing_bytes_encoded::<M>(encoded) else {
        return false;
    };
    let mut mac = key.mac();
    mac.update(&bytes);
    mac.verify_slice(&signature).is_ok()
}

/// HMAC-SHA256 of `domain ‖ 0x00 ‖ bytes` under `key`: for credentials that
/// are not Leyline messages (e.g. Urza's write tokens); the domain keeps one
/// use's MACs from passing as another's.
pub fn domain_mac(key: &SigningKey, domain: &str, bytes: &[u8]) -> Vec<u8> {
    let mut mac = key.mac();
    mac.update(domain.as_bytes());
    mac.update(&[0]);
    mac.update(bytes);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `tag` is [`domain_mac`] of `bytes` (constant-time compare).
pub fn domain_mac_valid(key: &SigningKey, domain: &str, bytes: &[u8], tag: &[u8]) -> bool {
    let mut mac = key.mac();
    mac.update(domain.as_bytes());
    mac.update(&[0]);
    mac.update(bytes);
    mac.verify_slice(tag).is_ok()
}

/// Signs `message` in place with `key`.
pub fn sign<M: Signed>(key: &SigningKey, message: &mut M) {
    let mut mac = key.mac();
    mac.update(&signing_bytes(message));
    message.set_signature(mac.finalize().into_bytes().to_vec());
}

/// Whether `message` carries a valid signature under `key` (constant-time compare).
pub fn signature_valid<M: Signed>(key: &SigningKey, message: &M) -> bool {
    let mut mac = key.mac();
    mac.update(&signing_bytes(message));
    mac.verify_slice(message.signature()).is_ok()
}

#[cfg(test)]
mod tests;
