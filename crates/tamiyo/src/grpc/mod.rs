//! Tamiyo over gRPC (tonic): [`serve`] runs controller sessions for
//! trainers anywhere (`esper tamiyo serve`); [`RemoteTamiyo`] is the
//! trainer's side, answering the same questions as an in-process
//! [`crate::TamiyoService`] — a decision per fence, field reports, the
//! controller state for checkpoints.
//!
//! Each trainer opens a session: its own policy instance, risk engine and
//! field-report tracker on the server, so trainers share a process, not a
//! state. The trainer keeps its own step deadline over the network: an
//! answer that arrives late is dropped with its request (never applied) and
//! counted as a deadline miss and a late discard, as in-process. Every call
//! carries a token made with the shared Leyline secret (`authorization:
//! Esper-HMAC <unix_ms>:<hex>`, HMAC-SHA256 of `"esper.tamiyo.call" 0x00
//! <unix_ms>`), judged by the Leyline freshness window; commands come back
//! signed with that secret, so Kasmina verifies them as it does local ones.

mod client;
mod server;
mod wire;

pub use client::{RemoteTamiyo, RemoteTamiyoConfig};
pub use server::{ServeConfig, Served, SessionFactory, serve};

/// Generated service code (tonic); messages are Leyline's.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic
)]
pub(crate) mod generated {
    include!(concat!(env!("OUT_DIR"), "/esper.leyline.v1.rs"));
}

use leyline::security::{SigningKey, domain_mac, domain_mac_valid};

const HEADER: &str = "authorization";
const SCHEME: &str = "Esper-HMAC ";
const DOMAIN: &str = "esper.tamiyo.call";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A call token made with `key` at `now_ms`.
pub(crate) fn token(key: &SigningKey, now_ms: u64) -> String {
    let at = now_ms.to_string();
    format!(
        "{SCHEME}{at}:{}",
        hex(&domain_mac(key, DOMAIN, at.as_bytes()))
    )
}

/// Checks a call's token: made with `key`, issued at most `window_ms` ago
/// and at most `skew_ms` ahead.
pub(crate) fn check_token(
    key: &SigningKey,
    credential: Option<&str>,
    now_ms: u64,
    window_ms: u64,
    skew_ms: u64,
) -> Result<(), String> {
    let credential = credential.ok_or("no authorization token (the shared secret's HMAC)")?;
    let rest = credential
        .strip_prefix(SCHEME)
        .ok_or("the authorization is not an Esper-HMAC token")?;
    let (at, tag) = rest.split_once(':').ok_or("a malformed token")?;
    let issued: u64 = at.parse().map_err(|_| "the token's time is not a number")?;
    let tag = unhex(tag).ok_or("the token's MAC is not hex")?;
    if !domain_mac_valid(key, DOMAIN, at.as_bytes(), &tag) {
        return Err("the token was not made with this service's secret".into());
    }
    if issued > now_ms.saturating_add(skew_ms) {
        return Err(format!("the token is {} ms in the future", issued - now_ms));
    }
    if now_ms.saturating_sub(issued) > window_ms {
        return Err(format!("the token is {} ms old", now_ms - issued));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_a_fresh_token_of_the_same_secret_passes() {
        let key = SigningKey::from_bytes(&[7; 32]).unwrap();
        let other = SigningKey::from_bytes(&[8; 32]).unwrap();
        let t = token(&key, 1_000_000);
        assert!(check_token(&key, Some(&t), 1_000_500, 60_000, 5_000).is_ok());
        assert!(check_token(&other, Some(&t), 1_000_500, 60_000, 5_000).is_err());
        assert!(check_token(&key, Some(&t), 1_100_000, 60_000, 5_000).is_err());
        assert!(check_token(&key, Some(&t), 900_000, 60_000, 5_000).is_err());
        assert!(check_token(&key, None, 1_000_000, 60_000, 5_000).is_err());
        assert!(check_token(&key, Some("Bearer x"), 1_000_000, 60_000, 5_000).is_err());
        assert!(check_token(&key, Some("Esper-HMAC 1:zz"), 1, 60_000, 5_000).is_err());
    }
}
