//! The verifier: signature, id, freshness, nonce — in that order.

use std::collections::BTreeMap;

use super::{NonceLedger, Signed, SigningKey, signature_valid, signature_valid_encoded};
use crate::config::SecurityConfig;
use crate::v1::VerificationFailure;

/// A signed message that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} rejected: {} ({detail})", .message_type, .reason.as_str_name())]
pub struct Rejection {
    /// Why.
    pub reason: VerificationFailure,
    /// Full proto name of the message.
    pub message_type: String,
    /// The message's id (empty when that was the problem).
    pub message_id: String,
    /// Human-readable detail (times and windows for freshness failures).
    pub detail: String,
}

/// Counters kept by a [`Verifier`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerificationStats {
    /// Messages that passed.
    pub accepted: u64,
    /// Rejections by reason name (`VERIFICATION_FAILURE_*`).
    pub rejected: BTreeMap<&'static str, u64>,
    /// Nonces evicted from the full ledger before they expired.
    pub ledger_evictions: u64,
}

/// Verifies signed messages with one key and one nonce ledger.
///
/// Owned by one receiver (Kasmina's intake on the training thread, an Oona
/// consumer); wrap it in a mutex to share it.
#[derive(Debug)]
pub struct Verifier {
    key: SigningKey,
    ledger: NonceLedger,
    freshness_window_ms: u64,
    future_skew_ms: u64,
    stats: VerificationStats,
}

impl Verifier {
    /// A verifier with the windows and ledger bounds of `config`.
    pub fn new(key: SigningKey, config: &SecurityConfig) -> Self {
        Self {
            key,
            ledger: NonceLedger::new(
                u64::from(config.nonce_ttl_s) * 1000,
                config.nonce_capacity as usize,
            ),
            freshness_window_ms: u64::from(config.freshness_window_s) * 1000,
            future_skew_ms: u64::from(config.future_skew_s) * 1000,
            stats: VerificationStats::default(),
        }
    }

    /// Verifies `message` as of `now_ms` (Unix epoch milliseconds). On success the
    /// message's id is burned; on failure nothing is recorded but the counter.
    pub fn verify<M: Signed>(&mut self, message: &M, now_ms: u64) -> Result<(), Rejection> {
        self.count(None, message, now_ms)
    }

    /// [`Verifier::verify`] for a message received as bytes: the signature is
    /// checked over `encoded`, the bytes `message` was decoded from, as
    /// transmitted (so fields this build does not know still verify).
    pub fn verify_encoded<M: Signed>(
        &mut self,
        message: &M,
        encoded: &[u8],
        now_ms: u64,
    ) -> Result<(), Rejection> {
        self.count(Some(encoded), message, now_ms)
    }

    fn count<M: Signed>(
        &mut self,
        encoded: Option<&[u8]>,
        message: &M,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        let outcome = self.check(encoded, message, now_ms);
        match &outcome {
            Ok(()) => self.stats.accepted += 1,
            Err(rejection) => {
                *self
                    .stats
                    .rejected
                    .entry(rejection.reason.as_str_name())
                    .or_default() += 1
            }
        }
        self.stats.ledger_evictions = self.ledger.evictions();
        outcome
    }

    /// [`Verifier::verify`] against the wall clock.
    pub fn verify_now<M: Signed>(&mut self, message: &M) -> Result<(), Rejection> {
        self.verify(message, crate::unix_now_ms())
    }

    /// Counters since creation.
    pub fn stats(&self) -> &VerificationStats {
        &self.stats
    }

    /// The key this verifier checks against.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    fn check<M: Signed>(
        &mut self,
        encoded: Option<&[u8]>,
        message: &M,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        let reject = |reason: VerificationFailure, detail: String| Rejection {
            reason,
            message_type: M::full_name(),
            message_id: message.nonce().to_owned(),
            detail,
        };
        if message.signature().is_empty() {
            return Err(reject(
                VerificationFailure::MissingSignature,
                "message is unsigned".into(),
            ));
        }
        let valid = match encoded {
            Some(bytes) => signature_valid_encoded::<M>(&self.key, bytes),
            None => signature_valid(&self.key, message),
        };
        if !valid {
            return Err(reject(
                VerificationFailure::InvalidSignature,
                "HMAC does not match".into(),
            ));
        }
        if message.nonce().trim().is_empty() {
            return Err(reject(
                VerificationFailure::MissingId,
                "message id is empty".into(),
            ));
        }
        let issued = message.issued_at_ms();
        if issued == 0 {
            return Err(reject(
                VerificationFailure::MissingTimestamp,
                "issued_at is 0".into(),
            ));
        }
        if issued > now_ms.saturating_add(self.future_skew_ms) {
            return Err(reject(
                VerificationFailure::IssuedInFuture,
                format!(
                    "issued {} ms ahead of now, skew allows {}",
                    issued - now_ms,
                    self.future_skew_ms
                ),
            ));
        }
        let age = now_ms.saturating_sub(issued);
        if age > self.freshness_window_ms {
            return Err(reject(
                VerificationFailure::Stale,
                format!(
                    "issued {age} ms ago, window is {} ms",
                    self.freshness_window_ms
                ),
            ));
        }
        if !self.ledger.burn(message.nonce(), now_ms) {
            return Err(reject(
                VerificationFailure::NonceReplayed,
                "id seen before".into(),
            ));
        }
        Ok(())
    }
}
