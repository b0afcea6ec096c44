//! The `jwt` auth backend (ejabberd's `auth_method: jwt`): the password is
//! a JSON Web Token whose `jwt_jid_field` claim (default `jid`) is the
//! account's JID; `exp` and `nbf` are honoured. The key file (`jwt_key`)
//! is either
//! - a JWK, or a JWK set (`{"keys": […]}`): `kty: oct` (HS256, HS384,
//!   HS512), `kty: RSA` (`n`, `e`: RS256, RS384, RS512) or `kty: EC`
//!   (`crv` P-256: ES256, P-384: ES384); or
//! - PEM public keys (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey
//!   -pubout` writes them): RSA (RS256/384/512) or EC P-256/P-384
//!   (ES256/ES384).
//!
//! A token's `alg` must fit the key's type (and the JWK's `alg`, when it
//! names one), so an RSA public key is never taken for an HMAC secret;
//! `none` is refused. With several keys, a token naming a `kid` is checked
//! against the key of that id, otherwise against each key in turn.
//! Signatures are verified with `ring` (already rustls' provider).

use super::AuthOutcome;
use base64::Engine;
use hmac::{Hmac, Mac};
use ring::signature::{self, UnparsedPublicKey};
use serde_json::Value;
use std::path::Path;

/// One verification key.
enum Key {
    /// An HMAC secret (HS*).
    Hmac(Vec<u8>),
    /// An RSA public key as PKCS#1 `RSAPublicKey` DER (RS*).
    Rsa(Vec<u8>),
    /// An RSA public key by modulus and exponent (RS*, from a JWK).
    RsaParts { n: Vec<u8>, e: Vec<u8> },
    /// An EC public key (an uncompressed point) and its one algorithm.
    Ec { alg: &'static str, point: Vec<u8> },
}

struct Entry {
    key: Key,
    kid: Option<String>,
    /// The JWK's `alg`, when it names one.
    alg: Option<String>,
}

/// The verification keys of one host.
pub struct JwtKey {
    keys: Vec<Entry>,
    jid_field: String,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// A DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// The key of a DER `SubjectPublicKeyInfo` (RSA, EC P-256 or P-384).
fn spki(input: &[u8]) -> Result<Key, String> {
    let bad = || "not a public key (SubjectPublicKeyInfo)".to_string();
    let (0x30, body, _) = der(input).ok_or_else(bad)? else {
        return Err(bad());
    };
    let (0x30, alg, rest) = der(body).ok_or_else(bad)? else {
        return Err(bad());
    };
    let (0x03, bits, _) = der(rest).ok_or_else(bad)? else {
        return Err(bad());
    };
    let key = match bits.split_first() {
        Some((0, k)) => k.to_vec(),
        _ => return Err(bad()),
    };
    let (0x06, oid, params) = der(alg).ok_or_else(bad)? else {
        return Err(bad());
    };
    if oid == OID_RSA {
        return Ok(Key::Rsa(key));
    }
    if oid == OID_EC {
        let curve = match der(params) {
            Some((0x06, c, _)) => c,
            _ => return Err("an EC key without a named curve".into()),
        };
        let alg = if curve == OID_P256 {
            "ES256"
        } else if curve == OID_P384 {
            "ES384"
        } else {
            return Err("EC keys on P-256 or P-384 only".into());
        };
        return Ok(Key::Ec { alg, point: key });
    }
    Err("RSA or EC public keys only".into())
}

/// One JWK.
fn jwk(v: &Value) -> Result<Entry, String> {
    let field = |name: &str| -> Result<Vec<u8>, String> {
        v.get(name)
            .and_then(Value::as_str)
            .and_then(b64)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| format!("no usable `{name}`"))
    };
    let key = match v.get("kty").and_then(Value::as_str) {
        Some("oct") => Key::Hmac(field("k")?),
        Some("RSA") => Key::RsaParts {
            n: field("n")?,
            e: field("e")?,
        },
        Some("EC") => {
            let alg = match v.get("crv").and_then(Value::as_str) {
                Some("P-256") => "ES256",
                Some("P-384") => "ES384",
                _ => return Err("EC keys on P-256 or P-384 only".into()),
            };
            let (x, y) = (field("x")?, field("y")?);
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Key::Ec { alg, point }
        }
        _ => return Err("`kty` must be oct, RSA or EC".into()),
    };
    Ok(Entry {
        key,
        kid: v.get("kid").and_then(Value::as_str).map(str::to_string),
        alg: v.get("alg").and_then(Value::as_str).map(str::to_string),
    })
}

impl Key {
    /// Check a signature made with `alg` (refused when `alg` does not fit
    /// this key).
    fn verify(&self, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
        macro_rules! hmac {
            ($k:expr, $h:ty) => {{
                let Ok(mut m) = <Hmac<$h> as Mac>::new_from_slice($k) else {
                    return false;
                };
                m.update(signed);
                m.verify_slice(sig).is_ok()
            }};
        }
        let rsa = |alg: &str| -> Option<&'static signature::RsaParameters> {
            match alg {
                "RS256" => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
                "RS384" => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
                "RS512" => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
                _ => None,
            }
        };
        match self {
            Key::Hmac(k) => match alg {
                "HS256" => hmac!(k, sha2::Sha256),
                "HS384" => hmac!(k, sha2::Sha384),
                "HS512" => hmac!(k, sha2::Sha512),
                _ => false,
            },
            Key::Rsa(der) => rsa(alg).is_some_and(|p| {
                UnparsedPublicKey::new(p, der.as_slice())
                    .verify(signed, sig)
                    .is_ok()
            }),
            Key::RsaParts { n, e } => rsa(alg).is_some_and(|p| {
                signature::RsaPublicKeyComponents { n, e }
                    .verify(p, signed, sig)
                    .is_ok()
            }),
            Key::Ec { alg: want, point } => {
                let p: &'static signature::EcdsaVerificationAlgorithm = match *want {
                    "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
                    _ => &signature::ECDSA_P384_SHA384_FIXED,
                };
                alg == *want
                    && UnparsedPublicKey::new(p, point.as_slice())
                        .verify(signed, sig)
                        .is_ok()
            }
        }
    }
}

impl JwtKey {
    /// Read the key file: a JWK (set) or PEM public keys.
    pub fn load(path: &Path, jid_field: &str) -> Result<JwtKey, String> {
        let err = |m: String| format!("jwt_key {}: {m}", path.display());
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let keys = if text.trim_ascii_start().starts_with(b"-----BEGIN") {
            use rustls::pki_types::pem::{PemObject, SectionKind};
            let mut keys = Vec::new();
            for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&text) {
                match section.map_err(|e| err(format!("bad PEM: {e}")))? {
                    (SectionKind::PublicKey, der) => keys.push(Entry {
                        key: spki(&der).map_err(err)?,
                        kid: None,
                        alg: None,
                    }),
                    (kind, _) => {
                        return Err(err(format!(
                            "a PEM section of type {kind:?}: only public keys (`BEGIN PUBLIC KEY`) are read"
                        )));
                    }
                }
            }
            keys
        } else {
            let v: Value = serde_json::from_slice(&text)
                .map_err(|e| err(format!("neither PEM nor JSON: {e}")))?;
            match v.get("keys").and_then(Value::as_array) {
                Some(set) => set.iter().map(jwk).collect::<Result<Vec<_>, _>>(),
                None => jwk(&v).map(|k| vec![k]),
            }
            .map_err(err)?
        };
        if keys.is_empty() {
            return Err(err("no key in the file".into()));
        }
        Ok(JwtKey {
            keys,
            jid_field: jid_field.to_string(),
        })
    }

    fn verify_sig(&self, alg: &str, kid: Option<&str>, signed: &[u8], sig: &[u8]) -> bool {
        self.keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg))
            .any(|k| k.key.verify(alg, signed, sig))
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
        let kid = header
            .as_ref()
            .and_then(|v| v.get("kid"))
            .and_then(Value::as_str);
        let Some(sig) = b64(s) else {
            return AuthOutcome::Denied;
        };
        let signed_len = h.len() + 1 + p.len();
        if !self.verify_sig(alg, kid, &token.trim().as_bytes()[..signed_len], &sig) {
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
            keys: vec![Entry {
                key: Key::Hmac(b"secret-key".to_vec()),
                kid: None,
                alg: None,
            }],
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

    fn b64e(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// `header.claims` signed by `sign`.
    fn token(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let signed = format!(
            "{}.{}",
            b64e(header.to_string().as_bytes()),
            b64e(claims.to_string().as_bytes())
        );
        let sig = sign(signed.as_bytes());
        format!("{signed}.{}", b64e(&sig))
    }

    fn der_len(n: usize) -> Vec<u8> {
        if n < 0x80 {
            vec![n as u8]
        } else if n < 0x100 {
            vec![0x81, n as u8]
        } else {
            vec![0x82, (n >> 8) as u8, n as u8]
        }
    }

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(der_len(body.len()));
        v.extend_from_slice(body);
        v
    }

    /// A PEM `PUBLIC KEY` of an EC point on the curve of `curve_oid`.
    fn ec_pem(curve_oid: &[u8], point: &[u8]) -> String {
        let alg = [tlv(0x06, OID_EC), tlv(0x06, curve_oid)].concat();
        let mut bits = vec![0u8];
        bits.extend_from_slice(point);
        let spki = tlv(0x30, &[tlv(0x30, &alg), tlv(0x03, &bits)].concat());
        let b = base64::engine::general_purpose::STANDARD.encode(spki);
        format!("-----BEGIN PUBLIC KEY-----\n{b}\n-----END PUBLIC KEY-----\n")
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/jwt");

    #[test]
    fn rsa_keys_from_pem_and_jwk() {
        let pem = std::fs::read(format!("{FIXTURES}/rsa-private.pem")).unwrap();
        let der = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap()
        };
        let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let sign = |enc: &'static dyn ring::signature::RsaEncoding| {
            let pair = &pair;
            let rng = &rng;
            move |m: &[u8]| {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(enc, rng, m, &mut sig).unwrap();
                sig
            }
        };
        let claims = serde_json::json!({"jid": "alice@example.test"});
        let dir = tempfile_dir();
        let from_pem =
            JwtKey::load(Path::new(&format!("{FIXTURES}/rsa-public.pem")), "jid").unwrap();
        for (alg, enc) in [
            (
                "RS256",
                &ring::signature::RSA_PKCS1_SHA256 as &'static dyn ring::signature::RsaEncoding,
            ),
            ("RS384", &ring::signature::RSA_PKCS1_SHA384),
            ("RS512", &ring::signature::RSA_PKCS1_SHA512),
        ] {
            let t = token(&serde_json::json!({"alg": alg}), &claims, sign(enc));
            assert_eq!(
                from_pem.check("example.test", "alice", &t),
                AuthOutcome::Ok,
                "{alg}"
            );
            assert_eq!(
                from_pem.check("example.test", "bob", &t),
                AuthOutcome::Denied
            );
        }
        // A token claiming another algorithm than it was signed with.
        let t = token(
            &serde_json::json!({"alg": "RS384"}),
            &claims,
            sign(&ring::signature::RSA_PKCS1_SHA256),
        );
        assert_eq!(
            from_pem.check("example.test", "alice", &t),
            AuthOutcome::Denied
        );
        // Algorithm confusion: the public key used as an HMAC secret.
        let public = std::fs::read(format!("{FIXTURES}/rsa-public.pem")).unwrap();
        let hs = token(&serde_json::json!({"alg": "HS256"}), &claims, |m| {
            let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&public).unwrap();
            mac.update(m);
            mac.finalize().into_bytes().to_vec()
        });
        assert_eq!(
            from_pem.check("example.test", "alice", &hs),
            AuthOutcome::Denied
        );
        // The same key as a JWK (n, e), in a set with a kid.
        let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let (n, e) = (c.n, c.e);
        let jwks = serde_json::json!({"keys": [
            {"kty": "oct", "k": b64e(b"other"), "kid": "h"},
            {"kty": "RSA", "n": b64e(&n), "e": b64e(&e), "kid": "r1", "alg": "RS256"},
        ]});
        let f = write(dir.path(), "set.jwk", &jwks.to_string());
        let set = JwtKey::load(&f, "jid").unwrap();
        let t = token(
            &serde_json::json!({"alg": "RS256", "kid": "r1"}),
            &claims,
            sign(&ring::signature::RSA_PKCS1_SHA256),
        );
        assert_eq!(set.check("example.test", "alice", &t), AuthOutcome::Ok);
        let t = token(
            &serde_json::json!({"alg": "RS256"}),
            &claims,
            sign(&ring::signature::RSA_PKCS1_SHA256),
        );
        assert_eq!(
            set.check("example.test", "alice", &t),
            AuthOutcome::Ok,
            "no kid: every key"
        );
        let t = token(
            &serde_json::json!({"alg": "RS256", "kid": "h"}),
            &claims,
            sign(&ring::signature::RSA_PKCS1_SHA256),
        );
        assert_eq!(
            set.check("example.test", "alice", &t),
            AuthOutcome::Denied,
            "kid of another key"
        );
        let t = token(
            &serde_json::json!({"alg": "RS512", "kid": "r1"}),
            &claims,
            sign(&ring::signature::RSA_PKCS1_SHA512),
        );
        assert_eq!(
            set.check("example.test", "alice", &t),
            AuthOutcome::Denied,
            "the JWK's alg"
        );
    }

    fn tempfile_dir() -> TempDir {
        TempDir::new()
    }

    /// A throw-away directory (no tempfile dependency in this crate).
    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let p = std::env::temp_dir().join(format!("palaver-jwt-{:x}", rand::random::<u64>()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn ec_keys_from_pem_and_jwk() {
        use ring::signature::{EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let dir = tempfile_dir();
        let claims = serde_json::json!({"jid": "alice@example.test"});
        for (alg, signing, curve, crv) in [
            (
                "ES256",
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                OID_P256,
                "P-256",
            ),
            (
                "ES384",
                &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                OID_P384,
                "P-384",
            ),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
            let point = pair.public_key().as_ref().to_vec();
            let sign = |m: &[u8]| pair.sign(&rng, m).unwrap().as_ref().to_vec();
            let pem = write(dir.path(), &format!("{alg}.pem"), &ec_pem(curve, &point));
            let k = JwtKey::load(&pem, "jid").unwrap();
            let t = token(&serde_json::json!({"alg": alg}), &claims, sign);
            assert_eq!(
                k.check("example.test", "alice", &t),
                AuthOutcome::Ok,
                "{alg}"
            );
            let other = if alg == "ES256" { "ES384" } else { "ES256" };
            let t2 = token(&serde_json::json!({"alg": other}), &claims, sign);
            assert_eq!(k.check("example.test", "alice", &t2), AuthOutcome::Denied);
            let half = (point.len() - 1) / 2;
            let jwk = serde_json::json!({"kty": "EC", "crv": crv, "x": b64e(&point[1..1 + half]), "y": b64e(&point[1 + half..])});
            let f = write(dir.path(), &format!("{alg}.jwk"), &jwk.to_string());
            let k = JwtKey::load(&f, "jid").unwrap();
            assert_eq!(
                k.check("example.test", "alice", &t),
                AuthOutcome::Ok,
                "{alg} JWK"
            );
            // A tampered payload.
            let mut parts: Vec<&str> = t.split('.').collect();
            let forged = b64e(br#"{"jid":"bob@example.test"}"#);
            parts[1] = &forged;
            assert_eq!(
                k.check("example.test", "bob", &parts.join(".")),
                AuthOutcome::Denied
            );
        }
        // Unusable key files.
        for (name, text) in [
            (
                "empty.pem",
                "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
            ),
            (
                "priv.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
            (
                "curve.jwk",
                r#"{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}"#,
            ),
            ("none.jwk", r#"{"kty": "none"}"#),
            ("garbage", "not a key"),
            ("set.jwk", r#"{"keys": []}"#),
        ] {
            let f = write(dir.path(), name, text);
            assert!(JwtKey::load(&f, "jid").is_err(), "{name}");
        }
    }
}
