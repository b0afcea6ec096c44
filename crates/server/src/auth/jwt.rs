//! The `jwt` auth backend (ejabberd's `auth_method: jwt`): the password is
//! a JSON Web Token signed with the key of `jwt_key` (a JWK file, or a JWK
//! set, of `kty: oct` — HS256, HS384 or HS512), whose `jwt_jid_field`
//! claim (default `jid`) is the account's JID; `exp` and `nbf` are honoured.

use super::AuthOutcome;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use std::path::Path;

/// The verification key of one host.
pub struct JwtKey {
    key: Vec<u8>,
    jid_field: String,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

impl JwtKey {
    /// Read the JWK file.
    pub fn load(path: &Path, jid_field: &str) -> Result<JwtKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("jwt_key {}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("jwt_key {}: not JSON: {e}", path.display()))?;
        let jwk = match v.get("keys").and_then(Value::as_array) {
            Some(keys) => keys.first().cloned().unwrap_or(Value::Null),
            None => v,
        };
        if jwk.get("kty").and_then(Value::as_str) != Some("oct") {
            return Err(format!(
                "jwt_key {}: only `kty: oct` keys (HS256/384/512) are supported",
                path.display()
            ));
        }
        let key = jwk
            .get("k")
            .and_then(Value::as_str)
            .and_then(b64)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| format!("jwt_key {}: no usable `k`", path.display()))?;
        Ok(JwtKey {
            key,
            jid_field: jid_field.to_string(),
        })
    }

    fn verify_sig(&self, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
        macro_rules! check {
            ($h:ty) => {{
                let Ok(mut m) = <Hmac<$h> as Mac>::new_from_slice(&self.key) else {
                    return false;
                };
                m.update(signed);
                m.verify_slice(sig).is_ok()
            }};
        }
        match alg {
            "HS256" => check!(sha2::Sha256),
            "HS384" => check!(sha2::Sha384),
            "HS512" => check!(sha2::Sha512),
            _ => false,
        }
    }

    /// Whether `token` is valid now for `user@host`.
    pub fn check(&self, host: &str, user: &str, token: &str) -> AuthOutcome {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return AuthOutcome::Denied;
        };
        let header: Option<Value> = b64(h).and_then(|b| serde_json::from_slice(&b).ok());
        let Some(alg) = header
            .as_ref()
            .and_then(|v| v.get("alg"))
            .and_then(Value::as_str)
        else {
            return AuthOutcome::Denied;
        };
        let Some(sig) = b64(s) else {
            return AuthOutcome::Denied;
        };
        let signed_len = h.len() + 1 + p.len();
        if !self.verify_sig(alg, &token.trim().as_bytes()[..signed_len], &sig) {
            return AuthOutcome::Denied;
        }
        let Some(claims) = b64(p).and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else {
            return AuthOutcome::Denied;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_some_and(|exp| exp <= now)
        {
            return AuthOutcome::Denied;
        }
        if claims
            .get("nbf")
            .and_then(Value::as_i64)
            .is_some_and(|nbf| nbf > now)
        {
            return AuthOutcome::Denied;
        }
        let want = format!("{user}@{host}");
        match claims
            .get(&self.jid_field)
            .and_then(Value::as_str)
            .and_then(|j| jid::BareJid::new(j).ok())
        {
            Some(j) if j.as_str() == want => AuthOutcome::Ok,
            _ => AuthOutcome::Denied,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sign `claims` with HS256 and `key` (also used by the e2e tests' twin).
    pub fn sign(key: &[u8], claims: &Value) -> String {
        let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let h = e(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p = e(claims.to_string().as_bytes());
        let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
        m.update(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", e(&m.finalize().into_bytes()))
    }

    #[test]
    fn tokens() {
        let k = JwtKey {
            key: b"secret-key".to_vec(),
            jid_field: "jid".into(),
        };
        let t = sign(
            b"secret-key",
            &serde_json::json!({"jid": "alice@example.test"}),
        );
        assert_eq!(k.check("example.test", "alice", &t), AuthOutcome::Ok);
        assert_eq!(k.check("example.test", "bob", &t), AuthOutcome::Denied);
        let other = sign(b"other", &serde_json::json!({"jid": "alice@example.test"}));
        assert_eq!(
            k.check("example.test", "alice", &other),
            AuthOutcome::Denied
        );
        let expired = sign(
            b"secret-key",
            &serde_json::json!({"jid": "alice@example.test", "exp": 1000}),
        );
        assert_eq!(
            k.check("example.test", "alice", &expired),
            AuthOutcome::Denied
        );
        assert_eq!(k.check("example.test", "alice", "a.b"), AuthOutcome::Denied);
        assert_eq!(
            k.check("example.test", "alice", "not a token"),
            AuthOutcome::Denied
        );
        let none = t.rsplit_once('.').unwrap().0.to_string() + ".";
        assert_eq!(k.check("example.test", "alice", &none), AuthOutcome::Denied);
    }
}
