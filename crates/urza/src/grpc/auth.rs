//! Who may change the library over gRPC: every write (PutArtifact) carries
//! `authorization: Esper-HMAC <unix_ms>:<hex>`, where `<hex>` is
//! HMAC-SHA256 under the shared Leyline secret of
//! `"esper.urza.write" 0x00 <unix_ms as decimal>`. The server accepts a token
//! issued within the freshness window (and not further in the future than the
//! allowed skew). Reads stay open. A server started with [`WriteAuth::Open`]
//! accepts any write and says so when it starts.

use leyline::security::{SigningKey, domain_mac, domain_mac_valid};

/// The metadata key of the credential.
pub(crate) const HEADER: &str = "authorization";
const SCHEME: &str = "Esper-HMAC ";
const DOMAIN: &str = "esper.urza.write";

/// How the service authenticates writes.
#[derive(Debug, Clone)]
pub enum WriteAuth {
    /// Writes need a token made with this key (the shared Leyline secret).
    Key {
        /// The key tokens are checked with.
        key: SigningKey,
        /// How old a token may be, ms.
        window_ms: u64,
        /// How far ahead of the server's clock a token may be, ms.
        skew_ms: u64,
    },
    /// Anyone reaching the port may write (`urza.write_auth = false`).
    Open,
}

impl WriteAuth {
    /// Tokens made with `key`, judged by the Leyline freshness window and skew.
    pub fn with_key(key: SigningKey, security: &leyline::SecurityConfig) -> Self {
        Self::Key {
            key,
            window_ms: u64::from(security.freshness_window_s) * 1000,
            skew_ms: u64::from(security.future_skew_s) * 1000,
        }
    }

    /// Checks the credential a write came with (`None`: no header).
    pub(crate) fn check(&self, credential: Option<&str>, now_ms: u64) -> Result<(), String> {
        let Self::Key {
            key,
            window_ms,
            skew_ms,
        } = self
        else {
            return Ok(());
        };
        let credential =
            credential.ok_or("a write needs an `authorization: Esper-HMAC …` token")?;
        let token = credential
            .strip_prefix(SCHEME)
            .ok_or("the authorization scheme is not Esper-HMAC")?;
        let (at, tag) = token
            .split_once(':')
            .ok_or("the token is not <unix_ms>:<hex>")?;
        let issued: u64 = at.parse().map_err(|_| "the token's time is not a number")?;
        let tag = hex(tag).ok_or("the token's MAC is not hex")?;
        if !domain_mac_valid(key, DOMAIN, at.as_bytes(), &tag) {
            return Err("the token's MAC does not match (another secret?)".into());
        }
        if issued > now_ms.saturating_add(*skew_ms) {
            return Err(format!("the token is {} ms in the future", issued - now_ms));
        }
        if now_ms.saturating_sub(issued) > *window_ms {
            return Err(format!(
                "the token is {} ms old, the window is {window_ms} ms",
                now_ms - issued
            ));
        }
        Ok(())
    }
}

/// A write token made with `key` at `now_ms`.
pub(crate) fn token(key: &SigningKey, now_ms: u64) -> String {
    let at = now_ms.to_string();
    let tag: String = domain_mac(key, DOMAIN, at.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{SCHEME}{at}:{tag}")
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_a_fresh_token_of_the_same_secret_passes() {
        let key = SigningKey::from_bytes(&[3; 32]).unwrap();
        let other = SigningKey::from_bytes(&[4; 32]).unwrap();
        let auth = WriteAuth::with_key(key.clone(), &leyline::SecurityConfig::default());
        let now = 1_800_000_000_000;
        assert!(auth.check(Some(&token(&key, now)), now).is_ok());
        assert!(auth.check(None, now).unwrap_err().contains("needs"));
        assert!(
            auth.check(Some(&token(&other, now)), now)
                .unwrap_err()
                .contains("MAC")
        );
        assert!(
            auth.check(Some(&token(&key, now - 3_600_000)), now)
                .unwrap_err()
                .contains("old")
        );
        assert!(
            auth.check(Some(&token(&key, now + 3_600_000)), now)
                .unwrap_err()
                .contains("future")
        );
        assert!(auth.check(Some("Bearer x"), now).is_err());
        assert!(auth.check(Some("Esper-HMAC 12:zz"), now).is_err());
        assert!(WriteAuth::Open.check(None, now).is_ok());
    }
}
