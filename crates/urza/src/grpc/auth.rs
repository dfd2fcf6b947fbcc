//! Who may use the library over gRPC. A caller proves it holds the shared
//! Leyline secret with `authorization: Esper-HMAC <unix_ms>:<hex>`, where
//! `<hex>` is HMAC-SHA256 under that secret of `"esper.urza.write" 0x00
//! <unix_ms as decimal>`; the server accepts a token issued within the
//! freshness window (and not further ahead than the allowed skew).
//!
//! Every call that can change the catalog needs one: PutArtifact, and
//! EnsureArtifact (it forges and stores on demand). Reads (list, get, fetch,
//! watch) need one too when the service listens beyond loopback, and stay
//! open on loopback. A server started with [`ServiceAuth::Open`] accepts
//! anything and says so when it starts.

use leyline::security::{SigningKey, domain_mac, domain_mac_valid};

/// The metadata key of the credential.
pub(crate) const HEADER: &str = "authorization";
const SCHEME: &str = "Esper-HMAC ";
const DOMAIN: &str = "esper.urza.write";

/// How the service authenticates its callers.
#[derive(Debug, Clone)]
pub enum ServiceAuth {
    /// Writes (and, beyond loopback, reads) need a token made with this key
    /// (the shared Leyline secret).
    Key {
        /// The key tokens are checked with.
        key: SigningKey,
        /// How old a token may be, ms.
        window_ms: u64,
        /// How far ahead of the server's clock a token may be, ms.
        skew_ms: u64,
        /// Whether reads need a token too (set by `serve`: the address is
        /// not a loopback one).
        reads: bool,
    },
    /// Anyone reaching the port may write (`urza.write_auth = false`).
    Open,
}

impl ServiceAuth {
    /// Tokens made with `key`, judged by the Leyline freshness window and skew.
    pub fn with_key(key: SigningKey, security: &leyline::SecurityConfig) -> Self {
        Self::Key {
            key,
            window_ms: u64::from(security.freshness_window_s) * 1000,
            skew_ms: u64::from(security.future_skew_s) * 1000,
            reads: false,
        }
    }

    /// The same, with reads authenticated too when `beyond_loopback`.
    pub(crate) fn for_address(mut self, beyond_loopback: bool) -> Self {
        if let Self::Key { reads, .. } = &mut self {
            *reads = beyond_loopback;
        }
        self
    }

    /// Checks a read's credential: needed only beyond loopback.
    pub(crate) fn check_read(&self, credential: Option<&str>, now_ms: u64) -> Result<(), String> {
        match self {
            Self::Key { reads: false, .. } | Self::Open => Ok(()),
            Self::Key { reads: true, .. } => self.check(credential, now_ms),
        }
    }

    /// Checks the credential a write came with (`None`: no header).
    pub(crate) fn check(&self, credential: Option<&str>, now_ms: u64) -> Result<(), String> {
        let Self::Key {
            key,
            window_ms,
            skew_ms,
            ..
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
        let auth = ServiceAuth::with_key(key.clone(), &leyline::SecurityConfig::default());
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
        assert!(ServiceAuth::Open.check(None, now).is_ok());
        // Reads: open on loopback, a token beyond it.
        assert!(auth.check_read(None, now).is_ok());
        let remote = auth.for_address(true);
        assert!(remote.check_read(None, now).is_err());
        assert!(remote.check_read(Some(&token(&key, now)), now).is_ok());
    }
}
