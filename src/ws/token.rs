//! WebSocket tokens: stateless JWTs (HS256), bound to one project and one channel, expiring.
//!
//! `base64url(header).base64url(payload).base64url(HMAC-SHA256(header.payload))` with the
//! header `{"alg":"HS256","typ":"JWT"}` and the payload
//! `{"project_id","channel_id","topic","exp"}` (UUIDs as eddy writes them, `exp` in Unix
//! seconds), so ModelRiver's SDK reads it with its `decodeToken` and `isTokenExpired`
//! (`src/utils.ts`). The key is a random secret kept in the store, so tokens survive
//! restarts and need no table; the same token may reconnect to its channel until it
//! expires. Only eddy's own header is accepted: a token naming another algorithm (`none`
//! included) is malformed, never checked another way.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::job::{ChannelId, ProjectId};
use crate::secret::ct_eq;

/// `base64url({"alg":"HS256","typ":"JWT"})`.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
/// Longer tokens are refused unread (eddy's are about 300 characters).
const MAX_LEN: usize = 1024;

/// What a valid token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub project: ProjectId,
    pub channel: ChannelId,
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

/// The JWT payload.
#[derive(Serialize, Deserialize)]
struct Payload {
    project_id: String,
    channel_id: String,
    topic: String,
    exp: u64,
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

    fn mac(&self, signed: &str) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("hmac takes keys of any length");
        mac.update(signed.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn issue(&self, claims: Claims) -> String {
        let project_id = claims.project.to_string();
        let channel_id = claims.channel.to_string();
        let payload = Payload {
            topic: crate::ws::topic(&claims.project, &claims.channel),
            project_id,
            channel_id,
            exp: claims.expires_s,
        };
        let json = serde_json::to_vec(&payload).expect("token payloads serialize");
        let signed = format!("{HEADER}.{}", URL_SAFE_NO_PAD.encode(json));
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&signed));
        format!("{signed}.{signature}")
    }

    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if header != HEADER {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        if !ct_eq(&self.mac(signed), &signature) {
            return Err(TokenError::Signature);
        }
        let payload: Payload = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed)?;
        let claims = Claims {
            project: payload
                .project_id
                .parse()
                .map_err(|_| TokenError::Malformed)?,
            channel: payload
                .channel_id
                .parse()
                .map_err(|_| TokenError::Malformed)?,
            expires_s: payload.exp,
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
    use serde_json::{Value, json};

    fn claims() -> Claims {
        Claims {
            project: ProjectId::from_bytes([1; 16]),
            channel: ChannelId::from_bytes([2; 16]),
            expires_s: 1000,
        }
    }

    /// A token verifies under its key until it expires, and not under another key or
    /// after any part changes.
    #[test]
    fn issue_verify_expire_tamper() {
        let key = TokenKey::new([7; 32]);
        let token = key.issue(claims());
        assert_eq!(key.verify(&token, 999), Ok(claims()));
        assert_eq!(key.verify(&token, 1000), Err(TokenError::Expired));
        assert_eq!(
            TokenKey::new([8; 32]).verify(&token, 0),
            Err(TokenError::Signature)
        );
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["exp"] = json!(u64::MAX);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        );
        assert_eq!(key.verify(&forged, 0), Err(TokenError::Signature));
        assert_eq!(key.verify("not a token", 0), Err(TokenError::Malformed));
        assert_eq!(key.verify("a.b.c.d", 0), Err(TokenError::Malformed));
        assert_eq!(
            key.verify(&"x".repeat(MAX_LEN + 1), 0),
            Err(TokenError::Malformed)
        );
    }

    /// The token is a JWT an ordinary HS256 library would accept: the fixed header, the
    /// claims the SDK reads, and an HMAC-SHA256 over `header.payload` with the key.
    #[test]
    fn token_is_an_hs256_jwt() {
        let key = TokenKey::new([7; 32]);
        let token = key.issue(claims());
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| -> Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        assert_eq!(decode(parts[0]), json!({"alg": "HS256", "typ": "JWT"}));
        let project = "01010101-0101-0101-0101-010101010101";
        let channel = "02020202-0202-0202-0202-020202020202";
        assert_eq!(
            decode(parts[1]),
            json!({"project_id": project, "channel_id": channel,
                   "topic": format!("ai_response:{project}:{channel}"), "exp": 1000})
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
    }

    /// Another algorithm in the header is refused, even `none` with no signature.
    #[test]
    fn other_algorithms_are_refused() {
        let key = TokenKey::new([7; 32]);
        let token = key.issue(claims());
        let parts: Vec<&str> = token.split('.').collect();
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            key.verify(&format!("{none}.{}.", parts[1]), 0),
            Err(TokenError::Malformed)
        );
        let hs512 = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512","typ":"JWT"}"#);
        assert_eq!(
            key.verify(&format!("{hs512}.{}.{}", parts[1], parts[2]), 0),
            Err(TokenError::Malformed)
        );
    }
}
