//! WebSocket tokens: stateless, signed, bound to one project and one channel, expiring.
//!
//! `base64url(version ‖ project(16) ‖ channel(16) ‖ expires_s(8 BE) ‖ HMAC-SHA256[..16])`,
//! keyed by a random secret kept in the store, so tokens survive restarts and need no
//! table. The same token may reconnect to its channel until it expires.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::ct_eq;

const VERSION: u8 = 1;
const BODY: usize = 1 + 16 + 16 + 8;
const MAC: usize = 16;

/// What a valid token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub project: [u8; 16],
    pub channel: [u8; 16],
    pub expires_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
}

/// Issues and checks tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    secret: [u8; 32],
}

impl TokenKey {
    pub fn new(secret: [u8; 32]) -> TokenKey {
        TokenKey { secret }
    }

    fn mac(&self, body: &[u8]) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("hmac takes keys of any length");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    pub fn issue(&self, claims: Claims) -> String {
        let mut raw = [0u8; BODY + MAC];
        raw[0] = VERSION;
        raw[1..17].copy_from_slice(&claims.project);
        raw[17..33].copy_from_slice(&claims.channel);
        raw[33..41].copy_from_slice(&claims.expires_s.to_be_bytes());
        let mac = self.mac(&raw[..BODY]);
        raw[BODY..].copy_from_slice(&mac[..MAC]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        if token.len() > 128 {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != BODY + MAC || raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let mac = self.mac(&raw[..BODY]);
        if !ct_eq(&mac[..MAC], &raw[BODY..]) {
            return Err(TokenError::Signature);
        }
        let claims = Claims {
            project: raw[1..17].try_into().map_err(|_| TokenError::Malformed)?,
            channel: raw[17..33].try_into().map_err(|_| TokenError::Malformed)?,
            expires_s: u64::from_be_bytes(
                raw[33..41].try_into().map_err(|_| TokenError::Malformed)?,
            ),
        };
        if now_s >= claims.expires_s {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token verifies under its key until it expires, and not under another key or
    /// after any byte changes.
    #[test]
    fn issue_verify_expire_tamper() {
        let key = TokenKey::new([7; 32]);
        let claims = Claims {
            project: [1; 16],
            channel: [2; 16],
            expires_s: 1000,
        };
        let token = key.issue(claims);
        assert_eq!(key.verify(&token, 999), Ok(claims));
        assert_eq!(key.verify(&token, 1000), Err(TokenError::Expired));
        assert_eq!(
            TokenKey::new([8; 32]).verify(&token, 0),
            Err(TokenError::Signature)
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[20] ^= 1;
        assert_eq!(
            key.verify(&URL_SAFE_NO_PAD.encode(bytes), 0),
            Err(TokenError::Signature)
        );
        assert_eq!(key.verify("not a token", 0), Err(TokenError::Malformed));
    }
}
