//! Sans-IO SASL mechanisms.
//!
//! This module implements the server side of the SASL mechanisms Palaver
//! offers, plus a SCRAM client used by tests (and, later, server-to-server
//! authentication):
//!
//! * `PLAIN` (RFC 4616), see [`parse_plain`] and
//!   [`ScramCredentials::verify_password`];
//! * `SCRAM-SHA-1`, `SCRAM-SHA-256` and `SCRAM-SHA-512` (RFC 5802, RFC 7677),
//!   see [`ScramServer`] and [`ScramClient`];
//! * their channel-binding `-PLUS` variants, with the `tls-exporter`
//!   (RFC 9266) and `tls-server-end-point` (RFC 5929) binding types
//!   (advertised as described in XEP-0440), see [`ChannelBindings`].
//!
//! Nothing here performs I/O: the caller feeds the decoded SASL payloads
//! (the base64 text of `<auth/>` / `<response/>` elements, decoded with
//! [`decode_sasl_payload`]) and sends back what is returned.
//!
//! Passwords and usernames are not run through the full SASLprep profile
//! (RFC 4013); they are compared as UTF-8 bytes. SCRAM usernames only get
//! the mandatory `=2C` / `=3D` unescaping.

use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Digest as _;
use subtle::{Choice, ConstantTimeEq};

/// Runs `$body` with the type alias `$d` bound to the digest type that
/// corresponds to the given [`ScramHash`].
macro_rules! with_digest {
    ($hash:expr, $d:ident => $body:expr) => {
        match $hash {
            ScramHash::Sha1 => {
                type $d = sha1::Sha1;
                $body
            }
            ScramHash::Sha256 => {
                type $d = sha2::Sha256;
                $body
            }
            ScramHash::Sha512 => {
                type $d = sha2::Sha512;
                $body
            }
        }
    };
}

/// Default PBKDF2 iteration count for newly generated SCRAM credentials
/// (the minimum recommended by RFC 7677).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length in bytes of the random salt made by [`ScramCredentials::generate`].
pub const SALT_LEN: usize = 16;

/// Highest iteration count [`ScramClient`] accepts from a server, so that a
/// hostile server cannot make the client spin for a very long time.
pub const MAX_CLIENT_ITERATIONS: u32 = 10_000_000;

/// Number of random bytes in a generated nonce (base64-encoded to 24
/// printable characters, none of them a comma).
const NONCE_RANDOM_BYTES: usize = 18;

// ---------------------------------------------------------------------------
// Hashes and mechanisms
// ---------------------------------------------------------------------------

/// The hash function underlying a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SHA-1 (`SCRAM-SHA-1`, RFC 5802).
    Sha1,
    /// SHA-256 (`SCRAM-SHA-256`, RFC 7677).
    Sha256,
    /// SHA-512 (`SCRAM-SHA-512`).
    Sha512,
}

impl ScramHash {
    /// All supported hashes, strongest first (the order in which a server
    /// should advertise them).
    pub const ALL: [ScramHash; 3] = [ScramHash::Sha512, ScramHash::Sha256, ScramHash::Sha1];

    /// The hash name as it appears in the mechanism name: `"SHA-1"`,
    /// `"SHA-256"` or `"SHA-512"`.
    pub fn name(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SHA-1",
            ScramHash::Sha256 => "SHA-256",
            ScramHash::Sha512 => "SHA-512",
        }
    }

    /// Parses a hash name as returned by [`ScramHash::name`].
    pub fn from_name(name: &str) -> Option<ScramHash> {
        ScramHash::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Output length of the hash (and of SCRAM keys, proofs and
    /// signatures) in bytes.
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
            ScramHash::Sha512 => 64,
        }
    }

    /// `H(data)`.
    fn digest(self, data: &[u8]) -> Vec<u8> {
        with_digest!(self, D => D::digest(data).to_vec())
    }

    /// `HMAC(key, data)`.
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        with_digest!(self, D => {
            // HMAC is defined for keys of every length; this cannot fail.
            let mut mac = <Hmac<D> as Mac>::new_from_slice(key)
                .expect("HMAC accepts keys of any length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        })
    }

    /// `Hi(password, salt, iterations)`, i.e. PBKDF2 with HMAC.
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.output_len()];
        with_digest!(self, D => pbkdf2::pbkdf2_hmac::<D>(password, salt, iterations, &mut out));
        out
    }

    /// Derives `(ClientKey, StoredKey, ServerKey)` from a salted password.
    fn keys(self, salted_password: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let client_key = self.hmac(salted_password, b"Client Key");
        let stored_key = self.digest(&client_key);
        let server_key = self.hmac(salted_password, b"Server Key");
        (client_key, stored_key, server_key)
    }
}

impl fmt::Display for ScramHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A SASL mechanism supported by Palaver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616).
    Plain,
    /// `ANONYMOUS` (RFC 4505): no credentials, a fresh account.
    Anonymous,
    /// `SCRAM-<hash>` or, with `plus`, `SCRAM-<hash>-PLUS`.
    Scram {
        /// The underlying hash function.
        hash: ScramHash,
        /// Whether this is the channel-binding (`-PLUS`) variant.
        plus: bool,
    },
}

impl Mechanism {
    /// All mechanisms, in order of preference (strongest first).
    pub const ALL: [Mechanism; 8] = [
        Mechanism::Scram {
            hash: ScramHash::Sha512,
            plus: true,
        },
        Mechanism::Scram {
            hash: ScramHash::Sha256,
            plus: true,
        },
        Mechanism::Scram {
            hash: ScramHash::Sha1,
            plus: true,
        },
        Mechanism::Scram {
            hash: ScramHash::Sha512,
            plus: false,
        },
        Mechanism::Scram {
            hash: ScramHash::Sha256,
            plus: false,
        },
        Mechanism::Scram {
            hash: ScramHash::Sha1,
            plus: false,
        },
        Mechanism::Plain,
        Mechanism::Anonymous,
    ];

    /// The registered mechanism name, e.g. `"PLAIN"`, `"SCRAM-SHA-1"` or
    /// `"SCRAM-SHA-512-PLUS"`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Anonymous => "ANONYMOUS",
            Mechanism::Scram { hash, plus } => match (hash, plus) {
                (ScramHash::Sha1, false) => "SCRAM-SHA-1",
                (ScramHash::Sha1, true) => "SCRAM-SHA-1-PLUS",
                (ScramHash::Sha256, false) => "SCRAM-SHA-256",
                (ScramHash::Sha256, true) => "SCRAM-SHA-256-PLUS",
                (ScramHash::Sha512, false) => "SCRAM-SHA-512",
                (ScramHash::Sha512, true) => "SCRAM-SHA-512-PLUS",
            },
        }
    }

    /// Parses a mechanism name (case-sensitive, as registered).
    pub fn from_name(s: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether this is a channel-binding (`-PLUS`) mechanism.
    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::Scram { plus: true, .. })
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// Channel binding
// ---------------------------------------------------------------------------

/// A TLS channel-binding type usable with the `-PLUS` mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelBindingType {
    /// `tls-exporter` (RFC 9266). Only secure with TLS 1.3, or TLS 1.2 with
    /// the extended master secret extension; the TLS layer must not offer it
    /// otherwise.
    TlsExporter,
    /// `tls-server-end-point` (RFC 5929): a hash of the server certificate.
    TlsServerEndPoint,
}

impl ChannelBindingType {
    /// All binding types, in order of preference.
    pub const ALL: [ChannelBindingType; 2] = [
        ChannelBindingType::TlsExporter,
        ChannelBindingType::TlsServerEndPoint,
    ];

    /// The registered name: `"tls-exporter"` or `"tls-server-end-point"`.
    pub fn name(self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    /// Parses a binding type name as returned by [`ChannelBindingType::name`].
    pub fn from_name(name: &str) -> Option<ChannelBindingType> {
        ChannelBindingType::ALL
            .into_iter()
            .find(|t| t.name() == name)
    }
}

impl fmt::Display for ChannelBindingType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Channel-binding data the TLS layer can provide for this connection.
///
/// An empty value counts as unavailable. A server should only advertise
/// the `-PLUS` mechanisms (and the XEP-0440 `<sasl-channel-binding/>` list,
/// from [`ChannelBindings::supported`]) when this is not empty, and must
/// pass the same value to [`ScramServer::new`]: that is what lets the server
/// detect a client that was tricked into believing channel binding is not
/// offered (the `y` GS2 flag).
#[derive(Default, Clone, PartialEq, Eq)]
pub struct ChannelBindings {
    /// The `tls-exporter` value (RFC 9266): 32 bytes exported with the
    /// label `EXPORTER-Channel-Binding` and an empty context.
    pub tls_exporter: Option<Vec<u8>>,
    /// The `tls-server-end-point` value (RFC 5929): the hash of the server
    /// certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// The binding types available on this connection, in order of
    /// preference.
    pub fn supported(&self) -> Vec<ChannelBindingType> {
        ChannelBindingType::ALL
            .into_iter()
            .filter(|t| self.get(*t).is_some())
            .collect()
    }

    /// Whether no channel binding is available.
    pub fn is_empty(&self) -> bool {
        ChannelBindingType::ALL
            .into_iter()
            .all(|t| self.get(t).is_none())
    }

    /// The binding data of the given type, if available (and not empty).
    pub fn get(&self, ty: ChannelBindingType) -> Option<&[u8]> {
        let data = match ty {
            ChannelBindingType::TlsExporter => self.tls_exporter.as_deref(),
            ChannelBindingType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        };
        data.filter(|d| !d.is_empty())
    }
}

impl fmt::Debug for ChannelBindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The binding data itself is derived from TLS secrets: do not print it.
        f.debug_struct("ChannelBindings")
            .field("supported", &self.supported())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

/// Stored credentials for one hash (never the plaintext password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredentials {
    /// The hash these credentials were derived with.
    pub hash: ScramHash,
    /// The PBKDF2 salt.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count (at least 1).
    pub iterations: u32,
    /// `StoredKey = H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl ScramCredentials {
    /// Derives credentials from a password, salt and iteration count
    /// (an iteration count of 0 is treated as 1).
    pub fn derive(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(1);
        let salted = hash.salted_password(password.as_bytes(), salt, iterations);
        let (_, stored_key, server_key) = hash.keys(&salted);
        ScramCredentials {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        }
    }

    /// Derives credentials with a fresh random salt of [`SALT_LEN`] bytes.
    pub fn generate(hash: ScramHash, password: &str, iterations: u32) -> Self {
        let salt: [u8; SALT_LEN] = rand::random();
        Self::derive(hash, password, &salt, iterations)
    }

    /// Constant-time check of a plaintext password (used by PLAIN).
    pub fn verify_password(&self, password: &str) -> bool {
        let salted =
            self.hash
                .salted_password(password.as_bytes(), &self.salt, self.iterations.max(1));
        let (_, stored_key, server_key) = self.hash.keys(&salted);
        let ok = stored_key.ct_eq(&self.stored_key) & server_key.ct_eq(&self.server_key);
        bool::from(ok)
    }
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

/// RFC 6120 §6.5 SASL failure conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SaslFailure {
    /// `<aborted/>`: the client aborted the exchange.
    #[error("aborted")]
    Aborted,
    /// `<account-disabled/>`: the account is temporarily disabled.
    #[error("account-disabled")]
    AccountDisabled,
    /// `<credentials-expired/>`: the credentials have expired.
    #[error("credentials-expired")]
    CredentialsExpired,
    /// `<encryption-required/>`: the mechanism needs an encrypted stream.
    #[error("encryption-required")]
    EncryptionRequired,
    /// `<incorrect-encoding/>`: the base64 payload was invalid.
    #[error("incorrect-encoding")]
    IncorrectEncoding,
    /// `<invalid-authzid/>`: the authorization identity is not acceptable.
    #[error("invalid-authzid")]
    InvalidAuthzid,
    /// `<invalid-mechanism/>`: the mechanism is not supported or offered.
    #[error("invalid-mechanism")]
    InvalidMechanism,
    /// `<malformed-request/>`: the request could not be parsed.
    #[error("malformed-request")]
    MalformedRequest,
    /// `<mechanism-too-weak/>`: the mechanism is weaker than policy allows.
    #[error("mechanism-too-weak")]
    MechanismTooWeak,
    /// `<not-authorized/>`: the credentials (or channel binding) are wrong.
    #[error("not-authorized")]
    NotAuthorized,
    /// `<temporary-auth-failure/>`: a server-side error; try again later.
    #[error("temporary-auth-failure")]
    TemporaryAuthFailure,
}

impl SaslFailure {
    /// All failure conditions.
    pub const ALL: [SaslFailure; 11] = [
        SaslFailure::Aborted,
        SaslFailure::AccountDisabled,
        SaslFailure::CredentialsExpired,
        SaslFailure::EncryptionRequired,
        SaslFailure::IncorrectEncoding,
        SaslFailure::InvalidAuthzid,
        SaslFailure::InvalidMechanism,
        SaslFailure::MalformedRequest,
        SaslFailure::MechanismTooWeak,
        SaslFailure::NotAuthorized,
        SaslFailure::TemporaryAuthFailure,
    ];

    /// The element name of the condition inside `<failure/>`, e.g.
    /// `"not-authorized"`.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::AccountDisabled => "account-disabled",
            SaslFailure::CredentialsExpired => "credentials-expired",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }

    /// Parses a condition element name as returned by
    /// [`SaslFailure::condition`].
    pub fn from_condition(name: &str) -> Option<SaslFailure> {
        SaslFailure::ALL.into_iter().find(|f| f.condition() == name)
    }
}

// ---------------------------------------------------------------------------
// Payload transport encoding (RFC 6120 §6.4.2)
// ---------------------------------------------------------------------------

/// Decodes the base64 character data of an `<auth/>` or `<response/>`
/// element.
///
/// Both an empty element and the single character `=` denote an empty
/// payload. ASCII whitespace is ignored. Invalid base64 yields
/// [`SaslFailure::IncorrectEncoding`].
pub fn decode_sasl_payload(text: &str) -> Result<Vec<u8>, SaslFailure> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() || compact == "=" {
        return Ok(Vec::new());
    }
    B64.decode(compact.as_bytes())
        .map_err(|_| SaslFailure::IncorrectEncoding)
}

/// Encodes a payload as the character data of a `<challenge/>`,
/// `<response/>` or `<success/>` element: base64, with an empty payload
/// written as `=`.
pub fn encode_sasl_payload(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_owned()
    } else {
        B64.encode(data)
    }
}

// ---------------------------------------------------------------------------
// PLAIN
// ---------------------------------------------------------------------------

/// PLAIN (RFC 4616): returns `(authzid, authcid, password)`.
///
/// The message is `[authzid] NUL authcid NUL passwd`. An empty authzid is
/// returned as `None`. Fails with [`SaslFailure::MalformedRequest`] unless
/// there are exactly two NUL separators, all three fields are valid UTF-8,
/// and authcid and password are not empty.
pub fn parse_plain(msg: &[u8]) -> Result<(Option<String>, String, String), SaslFailure> {
    let mut fields = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| SaslFailure::MalformedRequest)
    };
    let authzid = utf8(authzid)?;
    let authzid = (!authzid.is_empty()).then_some(authzid);
    Ok((authzid, utf8(authcid)?, utf8(password)?))
}

// ---------------------------------------------------------------------------
// SCRAM syntax helpers (RFC 5802 §7)
// ---------------------------------------------------------------------------

/// Converts a SCRAM message to text: it must be UTF-8 without NULs.
fn scram_text(msg: &[u8]) -> Result<&str, SaslFailure> {
    let text = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
    if text.contains('\0') {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok(text)
}

/// `printable = %x21-2B / %x2D-7E` (a non-empty run of them).
fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `cb-name = 1*(ALPHA / DIGIT / "." / "-")`.
fn is_valid_cb_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// `attr-val = ALPHA "=" value` with a non-empty value (extensions).
fn is_valid_extension(part: &str) -> bool {
    matches!(part.as_bytes(), [k, b'=', _, ..] if k.is_ascii_alphabetic())
}

/// `posit-number = %x31-39 *DIGIT`, as a `u32`.
fn parse_posit_number(s: &str) -> Option<u32> {
    match s.as_bytes() {
        [b'1'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => s.parse().ok(),
        _ => None,
    }
}

/// Decodes a `saslname`: `=2C` becomes `,` and `=3D` becomes `=`; any other
/// use of `=` (and an empty name) is malformed.
fn decode_saslname(name: &str) -> Result<String, SaslFailure> {
    if name.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some((head, tail)) = rest.split_once('=') {
        out.push_str(head);
        if let Some(tail) = tail.strip_prefix("2C") {
            out.push(',');
            rest = tail;
        } else if let Some(tail) = tail.strip_prefix("3D") {
            out.push('=');
            rest = tail;
        } else {
            return Err(SaslFailure::MalformedRequest);
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Encodes a `saslname`: `=` becomes `=3D` and `,` becomes `=2C`.
fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn random_nonce() -> String {
    let bytes: [u8; NONCE_RANDOM_BYTES] = rand::random();
    B64.encode(bytes)
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Process-wide secret used to fabricate stable salts for unknown users.
fn fake_salt_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(rand::random)
}

/// A salt for a user that does not exist: stable for a given username and
/// hash within this process, so repeated attempts look like a real account.
fn fake_salt(hash: ScramHash, username: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(32 + username.len());
    input.extend_from_slice(b"palaver fake SCRAM salt\0");
    input.extend_from_slice(hash.name().as_bytes());
    input.push(0);
    input.extend_from_slice(username.as_bytes());
    let mut salt = ScramHash::Sha256.hmac(fake_salt_secret(), &input);
    salt.truncate(SALT_LEN);
    salt
}

// ---------------------------------------------------------------------------
// SCRAM server
// ---------------------------------------------------------------------------

/// Keys the server checks the client-final-message against.
struct Verifier {
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// False when the user does not exist (fabricated keys).
    known: bool,
}

/// Server side of one SCRAM exchange.
///
/// Usage: [`ScramServer::new`] with the client-first-message (the initial
/// response of `<auth/>`), look up the credentials for
/// [`ScramServer::username`], send [`ScramServer::server_first`] as the
/// challenge, then pass the client's response to
/// [`ScramServer::client_final`] and send its output as the additional data
/// of `<success/>`. The caller decides whether [`ScramServer::authzid`] is
/// acceptable for the authenticated user.
pub struct ScramServer {
    hash: ScramHash,
    plus: bool,
    cb_type: Option<ChannelBindingType>,
    username: String,
    authzid: Option<String>,
    client_first_bare: String,
    /// `base64(gs2-header || cb-data)` decoded: what `c=` must contain.
    expected_cbind: Vec<u8>,
    /// Client nonce followed by server nonce.
    nonce: String,
    fake_iterations: u32,
    server_first: Option<String>,
    verifier: Option<Verifier>,
    finished: bool,
}

impl ScramServer {
    /// Parses the client-first-message.
    ///
    /// `plus`: whether the `-PLUS` mechanism was selected. `cb`: the channel
    /// bindings this connection supports (pass an empty value when `-PLUS`
    /// was not advertised).
    ///
    /// # Channel-binding negotiation (the GS2 flag)
    ///
    /// * With `plus`, the flag must be `p=<type>`; `n` and `y` are
    ///   [`SaslFailure::MalformedRequest`]. A type that is not available in
    ///   `cb` — unknown to us, such as `tls-unique` (RFC 9266 leaves it
    ///   undefined for TLS 1.3, and rustls does not expose it), or known but
    ///   not on this connection, such as `tls-exporter` over TLS 1.2 — is
    ///   [`SaslFailure::InvalidMechanism`]: "SCRAM-…-PLUS with that type" is
    ///   not a mechanism this connection offers (RFC 5802's
    ///   `unsupported-channel-binding-type`; XEP-0440 lists the types that
    ///   are). The binding data itself is verified in
    ///   [`ScramServer::client_final`].
    /// * Without `plus`, `n` ("I do not bind") is always accepted, even when
    ///   `-PLUS` was advertised: XEP-0440 §3 lets a client that shares no
    ///   binding type with the server say exactly that, as the alternative
    ///   to a `y` the server may refuse.
    /// * Without `plus`, `y` ("I can bind but you cannot") is accepted only
    ///   when `cb` is empty. When the server advertised `-PLUS` (`cb` not
    ///   empty), RFC 5802 §6 says the server MUST fail: either an attacker
    ///   removed `-PLUS` from the features, or the client ignored them.
    ///   XEP-0440 does not relax this for a client whose only binding type
    ///   is not offered: it lets such a client send `n` instead and warns
    ///   that `y` may be refused. The server cannot tell that case from the
    ///   downgrade one (an attacker in the middle also controls what the
    ///   client seemed to try earlier on the stream), so `y` stays refused,
    ///   with [`SaslFailure::InvalidMechanism`].
    /// * `p=` without `plus` is malformed.
    ///
    /// None of these refusals involves a credential, so none of them is
    /// [`SaslFailure::NotAuthorized`]; a caller limiting password guesses
    /// can count that condition alone.
    ///
    /// Mandatory extensions (`m=`) are refused. The username and authzid
    /// have `=2C` / `=3D` decoded; other `=` escapes are malformed.
    pub fn new(
        hash: ScramHash,
        plus: bool,
        cb: &ChannelBindings,
        client_first: &[u8],
    ) -> Result<ScramServer, SaslFailure> {
        Self::build(hash, plus, cb, client_first, random_nonce())
    }

    /// Like [`ScramServer::new`] but with a fixed server nonce.
    ///
    /// Only meant for reproducing test vectors: a predictable nonce defeats
    /// SCRAM's replay protection. The nonce must consist of printable ASCII
    /// other than `,` ([`SaslFailure::MalformedRequest`] otherwise).
    pub fn new_with_nonce(
        hash: ScramHash,
        plus: bool,
        cb: &ChannelBindings,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<ScramServer, SaslFailure> {
        if !is_valid_nonce(server_nonce) {
            return Err(SaslFailure::MalformedRequest);
        }
        Self::build(hash, plus, cb, client_first, server_nonce.to_owned())
    }

    fn build(
        hash: ScramHash,
        plus: bool,
        cb: &ChannelBindings,
        client_first: &[u8],
        server_nonce: String,
    ) -> Result<ScramServer, SaslFailure> {
        let text = scram_text(client_first)?;

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = text.split_once(',').ok_or(SaslFailure::MalformedRequest)?;
        let (authz_field, bare) = rest.split_once(',').ok_or(SaslFailure::MalformedRequest)?;

        // See "Channel-binding negotiation" in the docs of `ScramServer::new`.
        let cb_type = match flag {
            "n" if !plus => None,
            "y" if !plus => {
                if !cb.is_empty() {
                    // RFC 5802 §6 "server-does-support-channel-binding": the
                    // client could bind and believes we cannot, although we
                    // advertised -PLUS. Either someone stripped -PLUS from our
                    // features (a downgrade) or the client ignored them; both
                    // are refused. Not a credential failure.
                    return Err(SaslFailure::InvalidMechanism);
                }
                None
            }
            _ => {
                let name = flag
                    .strip_prefix("p=")
                    .filter(|n| is_valid_cb_name(n))
                    .ok_or(SaslFailure::MalformedRequest)?;
                if !plus {
                    return Err(SaslFailure::MalformedRequest);
                }
                // RFC 5802 "unsupported-channel-binding-type": e.g.
                // `tls-unique`, which RFC 9266 leaves undefined for TLS 1.3,
                // or `tls-exporter` on a TLS 1.2 connection. A negotiation
                // failure, not a credential one.
                let ty = ChannelBindingType::from_name(name)
                    .filter(|t| cb.get(*t).is_some())
                    .ok_or(SaslFailure::InvalidMechanism)?;
                Some(ty)
            }
        };

        let authzid = if authz_field.is_empty() {
            None
        } else {
            let name = authz_field
                .strip_prefix("a=")
                .ok_or(SaslFailure::MalformedRequest)?;
            Some(decode_saslname(name)?)
        };

        // client-first-message-bare = [reserved-mext ","] username ","
        //                             nonce ["," extensions]
        let mut parts = bare.split(',');
        let username = parts
            .next()
            .and_then(|p| p.strip_prefix("n="))
            .ok_or(SaslFailure::MalformedRequest)?;
        let username = decode_saslname(username)?;
        let client_nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .filter(|n| is_valid_nonce(n))
            .ok_or(SaslFailure::MalformedRequest)?;
        if !parts.all(is_valid_extension) {
            return Err(SaslFailure::MalformedRequest);
        }

        let mut expected_cbind = format!("{flag},{authz_field},").into_bytes();
        if let Some(data) = cb_type.and_then(|t| cb.get(t)) {
            expected_cbind.extend_from_slice(data);
        }

        Ok(ScramServer {
            hash,
            plus,
            cb_type,
            username,
            authzid,
            client_first_bare: bare.to_owned(),
            expected_cbind,
            nonce: format!("{client_nonce}{server_nonce}"),
            fake_iterations: DEFAULT_ITERATIONS,
            server_first: None,
            verifier: None,
            finished: false,
        })
    }

    /// The (unescaped) username the client wants to authenticate as.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The authorization identity requested in the GS2 header, if any. It is
    /// up to the caller to accept it (typically only when it is absent or
    /// equal to the authenticated JID).
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// The hash of this exchange.
    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        Mechanism::Scram {
            hash: self.hash,
            plus: self.plus,
        }
    }

    /// The channel-binding type in use, if the `-PLUS` variant was chosen.
    pub fn channel_binding(&self) -> Option<ChannelBindingType> {
        self.cb_type
    }

    /// Sets the iteration count announced for unknown users (default
    /// [`DEFAULT_ITERATIONS`]); it should match what real accounts use.
    /// Must be called before [`ScramServer::server_first`].
    pub fn set_fake_iterations(&mut self, iterations: u32) {
        self.fake_iterations = iterations.max(1);
    }

    /// Produces the server-first-message using the stored credentials
    /// (which the caller looked up by [`ScramServer::username`]).
    ///
    /// If the user does not exist (or has no credentials for this hash),
    /// pass `None` (credentials for another hash are treated the same way):
    /// a salt that is stable for the username and the fake iteration count
    /// are announced so the exchange continues normally and only fails in
    /// [`ScramServer::client_final`], without revealing whether the account
    /// exists. Calling this again returns the same message.
    pub fn server_first(&mut self, creds: Option<&ScramCredentials>) -> Vec<u8> {
        if let Some(msg) = &self.server_first {
            return msg.clone().into_bytes();
        }
        let (salt, iterations, verifier) = match creds.filter(|c| c.hash == self.hash) {
            Some(c) => (
                c.salt.clone(),
                c.iterations,
                Verifier {
                    stored_key: c.stored_key.clone(),
                    server_key: c.server_key.clone(),
                    known: true,
                },
            ),
            None => {
                let random_key = || {
                    let bytes: [u8; 64] = rand::random();
                    bytes[..self.hash.output_len()].to_vec()
                };
                (
                    fake_salt(self.hash, &self.username),
                    self.fake_iterations,
                    Verifier {
                        stored_key: random_key(),
                        server_key: random_key(),
                        known: false,
                    },
                )
            }
        };
        let msg = format!("r={},s={},i={}", self.nonce, B64.encode(salt), iterations);
        self.verifier = Some(verifier);
        self.server_first = Some(msg.clone());
        msg.into_bytes()
    }

    /// Verifies the client-final-message.
    ///
    /// The channel-binding attribute must equal `base64(gs2-header ||
    /// cb-data)`, the nonce must be the combined nonce, and the proof must
    /// verify; all compared in constant time. Returns the
    /// server-final-message (`v=...`) to send as the additional data of
    /// `<success/>`. Errors: [`SaslFailure::NotAuthorized`] for a bad proof,
    /// nonce or channel binding (and for unknown users),
    /// [`SaslFailure::MalformedRequest`] for bad syntax or when called out of
    /// order. An exchange can be completed only once.
    pub fn client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, SaslFailure> {
        if self.finished {
            return Err(SaslFailure::MalformedRequest);
        }
        let (Some(server_first), Some(verifier)) = (&self.server_first, &self.verifier) else {
            return Err(SaslFailure::MalformedRequest);
        };
        self.finished = true;

        let text = scram_text(client_final)?;
        // client-final-message = channel-binding "," nonce ["," extensions]
        //                        "," proof
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(SaslFailure::MalformedRequest)?;
        let mut parts = without_proof.split(',');
        let cbind = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or(SaslFailure::MalformedRequest)?;
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(SaslFailure::MalformedRequest)?;
        if !parts.all(is_valid_extension) {
            return Err(SaslFailure::MalformedRequest);
        }
        let cbind = B64
            .decode(cbind)
            .map_err(|_| SaslFailure::MalformedRequest)?;
        let proof = B64
            .decode(proof)
            .map_err(|_| SaslFailure::MalformedRequest)?;
        if proof.len() != self.hash.output_len() {
            return Err(SaslFailure::MalformedRequest);
        }

        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, without_proof
        );
        let client_signature = self
            .hash
            .hmac(&verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let proof_ok = self.hash.digest(&client_key).ct_eq(&verifier.stored_key);
        let nonce_ok = nonce.as_bytes().ct_eq(self.nonce.as_bytes());
        let cbind_ok = cbind.ct_eq(&self.expected_cbind);
        let known = Choice::from(u8::from(verifier.known));

        if bool::from(proof_ok & nonce_ok & cbind_ok & known) {
            let signature = self
                .hash
                .hmac(&verifier.server_key, auth_message.as_bytes());
            Ok(format!("v={}", B64.encode(signature)).into_bytes())
        } else {
            Err(SaslFailure::NotAuthorized)
        }
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("mechanism", &self.mechanism())
            .field("channel_binding", &self.cb_type)
            .field("username", &self.username)
            .field("authzid", &self.authzid)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// SCRAM client
// ---------------------------------------------------------------------------

/// Client side of one SCRAM exchange (for tests and future s2s); mirrors
/// [`ScramServer`].
pub struct ScramClient {
    hash: ScramHash,
    username: String,
    password: String,
    authzid: Option<String>,
    cb: Option<(ChannelBindingType, Vec<u8>)>,
    flag_y: bool,
    nonce: String,
    /// `(gs2-header, client-first-message-bare)` once sent.
    first: Option<(String, String)>,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange. `cb`: `None` sends the GS2 header `n,,` (use
    /// [`ScramClient::with_gs2_flag_y`] for `y,,`); `Some((type, data))`
    /// selects the `-PLUS` variant and sends `p=<type>,,`.
    pub fn new(
        hash: ScramHash,
        username: &str,
        password: &str,
        cb: Option<(ChannelBindingType, Vec<u8>)>,
    ) -> Self {
        ScramClient {
            hash,
            username: username.to_owned(),
            password: password.to_owned(),
            authzid: None,
            cb,
            flag_y: false,
            nonce: random_nonce(),
            first: None,
            server_signature: None,
        }
    }

    /// Claims channel-binding support without using it (GS2 flag `y`), as a
    /// client does when the server did not advertise `-PLUS`. Has no effect
    /// when channel binding data was given.
    pub fn with_gs2_flag_y(mut self) -> Self {
        self.flag_y = true;
        self
    }

    /// Uses a fixed client nonce (for test vectors only).
    pub fn with_nonce(mut self, nonce: &str) -> Self {
        self.nonce = nonce.to_owned();
        self
    }

    /// Requests an authorization identity in the GS2 header.
    pub fn with_authzid(mut self, authzid: &str) -> Self {
        self.authzid = Some(authzid.to_owned());
        self
    }

    /// The mechanism this client uses.
    pub fn mechanism(&self) -> Mechanism {
        Mechanism::Scram {
            hash: self.hash,
            plus: self.cb.is_some(),
        }
    }

    /// Produces the client-first-message (the SASL initial response).
    pub fn client_first(&mut self) -> Vec<u8> {
        let flag = match (&self.cb, self.flag_y) {
            (Some((ty, _)), _) => format!("p={}", ty.name()),
            (None, true) => "y".to_owned(),
            (None, false) => "n".to_owned(),
        };
        let authzid = self
            .authzid
            .as_deref()
            .map(|a| format!("a={}", encode_saslname(a)))
            .unwrap_or_default();
        let header = format!("{flag},{authzid},");
        let bare = format!("n={},r={}", encode_saslname(&self.username), self.nonce);
        let msg = format!("{header}{bare}");
        self.first = Some((header, bare));
        self.server_signature = None;
        msg.into_bytes()
    }

    /// Processes the server-first-message and returns the
    /// client-final-message.
    ///
    /// Fails with [`SaslFailure::MalformedRequest`] on bad syntax, a nonce
    /// that does not extend the client nonce, a zero or excessive iteration
    /// count ([`MAX_CLIENT_ITERATIONS`]), or when called before
    /// [`ScramClient::client_first`].
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslFailure> {
        let Some((header, bare)) = &self.first else {
            return Err(SaslFailure::MalformedRequest);
        };
        let text = scram_text(msg)?;
        // server-first-message = [reserved-mext ","] nonce "," salt ","
        //                        iteration-count ["," extensions]
        let mut parts = text.split(',');
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .filter(|n| is_valid_nonce(n) && n.len() > self.nonce.len())
            .filter(|n| n.starts_with(self.nonce.as_str()))
            .ok_or(SaslFailure::MalformedRequest)?;
        let salt = parts
            .next()
            .and_then(|p| p.strip_prefix("s="))
            .and_then(|s| B64.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or(SaslFailure::MalformedRequest)?;
        let iterations = parts
            .next()
            .and_then(|p| p.strip_prefix("i="))
            .and_then(parse_posit_number)
            .filter(|i| *i <= MAX_CLIENT_ITERATIONS)
            .ok_or(SaslFailure::MalformedRequest)?;
        if !parts.all(is_valid_extension) {
            return Err(SaslFailure::MalformedRequest);
        }

        let salted = self
            .hash
            .salted_password(self.password.as_bytes(), &salt, iterations);
        let (client_key, stored_key, server_key) = self.hash.keys(&salted);

        let mut cbind = header.clone().into_bytes();
        if let Some((_, data)) = &self.cb {
            cbind.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={}", B64.encode(cbind), nonce);
        let auth_message = format!("{bare},{text},{without_proof}");
        let client_signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        self.server_signature = Some(self.hash.hmac(&server_key, auth_message.as_bytes()));

        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message (the additional data of
    /// `<success/>`). A server error (`e=...`) or wrong signature yields
    /// [`SaslFailure::NotAuthorized`]; bad syntax or calling this before
    /// [`ScramClient::handle_server_first`] yields
    /// [`SaslFailure::MalformedRequest`].
    pub fn verify_server_final(&self, msg: &[u8]) -> Result<(), SaslFailure> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or(SaslFailure::MalformedRequest)?;
        let text = scram_text(msg)?;
        let first = text.split(',').next().unwrap_or_default();
        if first.starts_with("e=") {
            return Err(SaslFailure::NotAuthorized);
        }
        let signature = first
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or(SaslFailure::MalformedRequest)?;
        if bool::from(signature.ct_eq(expected)) {
            Ok(())
        } else {
            Err(SaslFailure::NotAuthorized)
        }
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism())
            .field("username", &self.username)
            .field("authzid", &self.authzid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const RFC5802_CLIENT_FIRST: &str = "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL";
    const RFC5802_SERVER_FIRST: &str =
        "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
    const RFC5802_CLIENT_FINAL: &str =
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=";
    const RFC5802_SERVER_FINAL: &str = "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=";

    const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC7677_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
         s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC7677_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
         p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// Low iteration count to keep the tests fast.
    const TEST_ITERATIONS: u32 = 64;

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s).expect("test base64")
    }

    fn both_bindings() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some(vec![0x11; 32]),
            tls_server_end_point: Some(vec![0x22; 32]),
        }
    }

    /// Runs a complete exchange; fails with the first error of either side.
    fn exchange(
        mut client: ScramClient,
        plus: bool,
        cb: &ChannelBindings,
        creds: Option<&ScramCredentials>,
    ) -> Result<(), SaslFailure> {
        let hash = match client.mechanism() {
            Mechanism::Scram { hash, .. } => hash,
            Mechanism::Plain | Mechanism::Anonymous => unreachable!(),
        };
        let mut server = ScramServer::new(hash, plus, cb, &client.client_first())?;
        assert_eq!(server.username(), "juliet");
        let server_first = server.server_first(creds);
        let client_final = client.handle_server_first(&server_first)?;
        let server_final = server.client_final(&client_final)?;
        client.verify_server_final(&server_final)
    }

    fn creds(hash: ScramHash, password: &str) -> ScramCredentials {
        ScramCredentials::generate(hash, password, TEST_ITERATIONS)
    }

    #[test]
    fn rfc5802_client_vector() {
        let mut client = ScramClient::new(ScramHash::Sha1, "user", "pencil", None)
            .with_nonce("fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(client.client_first(), RFC5802_CLIENT_FIRST.as_bytes());
        let client_final = client
            .handle_server_first(RFC5802_SERVER_FIRST.as_bytes())
            .expect("server-first");
        assert_eq!(
            String::from_utf8(client_final).expect("utf8"),
            RFC5802_CLIENT_FINAL
        );
        client
            .verify_server_final(RFC5802_SERVER_FINAL.as_bytes())
            .expect("server signature");
        assert_eq!(
            client.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKc="),
            Err(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn rfc5802_server_vector() {
        let creds =
            ScramCredentials::derive(ScramHash::Sha1, "pencil", &b64("QSXCR+Q6sek8bf92"), 4096);
        assert!(creds.verify_password("pencil"));
        assert!(!creds.verify_password("pencil "));
        let mut server = ScramServer::new_with_nonce(
            ScramHash::Sha1,
            false,
            &ChannelBindings::default(),
            RFC5802_CLIENT_FIRST.as_bytes(),
            "3rfcNHYJY1ZVvWVs7j",
        )
        .expect("client-first");
        assert_eq!(server.username(), "user");
        assert_eq!(server.authzid(), None);
        assert_eq!(server.channel_binding(), None);
        assert_eq!(
            server.server_first(Some(&creds)),
            RFC5802_SERVER_FIRST.as_bytes()
        );
        // Idempotent.
        assert_eq!(
            server.server_first(Some(&creds)),
            RFC5802_SERVER_FIRST.as_bytes()
        );
        assert_eq!(
            server.client_final(RFC5802_CLIENT_FINAL.as_bytes()),
            Ok(RFC5802_SERVER_FINAL.as_bytes().to_vec())
        );
        // An exchange completes only once.
        assert_eq!(
            server.client_final(RFC5802_CLIENT_FINAL.as_bytes()),
            Err(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn rfc7677_client_vector() {
        let mut client = ScramClient::new(ScramHash::Sha256, "user", "pencil", None)
            .with_nonce("rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.client_first(), RFC7677_CLIENT_FIRST.as_bytes());
        let client_final = client
            .handle_server_first(RFC7677_SERVER_FIRST.as_bytes())
            .expect("server-first");
        assert_eq!(
            String::from_utf8(client_final).expect("utf8"),
            RFC7677_CLIENT_FINAL
        );
        client
            .verify_server_final(RFC7677_SERVER_FINAL.as_bytes())
            .expect("server signature");
    }

    #[test]
    fn rfc7677_server_vector() {
        let creds = ScramCredentials::derive(
            ScramHash::Sha256,
            "pencil",
            &b64("W22ZaJ0SNY7soEsUEjb6gQ=="),
            4096,
        );
        let mut server = ScramServer::new_with_nonce(
            ScramHash::Sha256,
            false,
            &ChannelBindings::default(),
            RFC7677_CLIENT_FIRST.as_bytes(),
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .expect("client-first");
        assert_eq!(
            server.server_first(Some(&creds)),
            RFC7677_SERVER_FIRST.as_bytes()
        );
        assert_eq!(
            server.client_final(RFC7677_CLIENT_FINAL.as_bytes()),
            Ok(RFC7677_SERVER_FINAL.as_bytes().to_vec())
        );
    }

    #[test]
    fn round_trips_all_hashes() {
        for hash in ScramHash::ALL {
            let c = creds(hash, "r0m30myr0m30");
            assert_eq!(c.stored_key.len(), hash.output_len());
            assert_eq!(c.server_key.len(), hash.output_len());
            assert_eq!(c.salt.len(), SALT_LEN);
            let client = ScramClient::new(hash, "juliet", "r0m30myr0m30", None);
            assert_eq!(
                exchange(client, false, &ChannelBindings::default(), Some(&c)),
                Ok(())
            );
        }
    }

    #[test]
    fn sha512_round_trip() {
        let c = ScramCredentials::generate(ScramHash::Sha512, "secret", DEFAULT_ITERATIONS);
        let client = ScramClient::new(ScramHash::Sha512, "juliet", "secret", None);
        assert_eq!(
            exchange(client, false, &ChannelBindings::default(), Some(&c)),
            Ok(())
        );
    }

    #[test]
    fn plus_round_trips() {
        let cb = both_bindings();
        assert_eq!(
            cb.supported(),
            vec![
                ChannelBindingType::TlsExporter,
                ChannelBindingType::TlsServerEndPoint
            ]
        );
        for hash in ScramHash::ALL {
            let c = creds(hash, "pw");
            for ty in ChannelBindingType::ALL {
                let data = cb.get(ty).expect("binding").to_vec();
                let mut client = ScramClient::new(hash, "juliet", "pw", Some((ty, data.clone())));
                assert!(client.mechanism().is_plus());
                let first = client.client_first();
                assert!(first.starts_with(format!("p={},,", ty.name()).as_bytes()));
                let mut server = ScramServer::new(hash, true, &cb, &first).expect("client-first");
                assert_eq!(server.channel_binding(), Some(ty));
                assert_eq!(server.mechanism(), Mechanism::Scram { hash, plus: true });
                let client_final = client
                    .handle_server_first(&server.server_first(Some(&c)))
                    .expect("server-first");
                let mut expected_cbind = format!("p={},,", ty.name()).into_bytes();
                expected_cbind.extend_from_slice(&data);
                assert!(
                    client_final
                        .starts_with(format!("c={},", B64.encode(&expected_cbind)).as_bytes())
                );
                let server_final = server.client_final(&client_final).expect("client-final");
                client
                    .verify_server_final(&server_final)
                    .expect("server-final");
            }
        }
    }

    #[test]
    fn plus_with_only_one_binding_type() {
        let cb = ChannelBindings {
            tls_exporter: None,
            tls_server_end_point: Some(vec![7; 48]),
        };
        assert_eq!(cb.supported(), vec![ChannelBindingType::TlsServerEndPoint]);
        let c = creds(ScramHash::Sha256, "pw");
        let ok = ScramClient::new(
            ScramHash::Sha256,
            "juliet",
            "pw",
            Some((ChannelBindingType::TlsServerEndPoint, vec![7; 48])),
        );
        assert_eq!(exchange(ok, true, &cb, Some(&c)), Ok(()));
        let unsupported = ScramClient::new(
            ScramHash::Sha256,
            "juliet",
            "pw",
            Some((ChannelBindingType::TlsExporter, vec![7; 32])),
        );
        assert_eq!(
            exchange(unsupported, true, &cb, Some(&c)),
            Err(SaslFailure::InvalidMechanism)
        );
        // Unknown (but well-formed) binding type.
        assert_eq!(
            ScramServer::new(
                ScramHash::Sha256,
                true,
                &cb,
                b"p=tls-unique,,n=juliet,r=abc"
            )
            .map(|_| ()),
            Err(SaslFailure::InvalidMechanism)
        );
        // Empty data counts as unavailable.
        let empty = ChannelBindings {
            tls_exporter: Some(Vec::new()),
            tls_server_end_point: None,
        };
        assert!(empty.is_empty());
        assert!(empty.supported().is_empty());
    }

    #[test]
    fn wrong_password_is_not_authorized() {
        for hash in ScramHash::ALL {
            let c = creds(hash, "right");
            let client = ScramClient::new(hash, "juliet", "wrong", None);
            assert_eq!(
                exchange(client, false, &ChannelBindings::default(), Some(&c)),
                Err(SaslFailure::NotAuthorized)
            );
            let cb = both_bindings();
            let client = ScramClient::new(
                hash,
                "juliet",
                "wrong",
                Some((ChannelBindingType::TlsExporter, vec![0x11; 32])),
            );
            assert_eq!(
                exchange(client, true, &cb, Some(&c)),
                Err(SaslFailure::NotAuthorized)
            );
        }
    }

    #[test]
    fn wrong_channel_binding_data_is_not_authorized() {
        let cb = both_bindings();
        let c = creds(ScramHash::Sha256, "pw");
        for ty in ChannelBindingType::ALL {
            let client = ScramClient::new(
                ScramHash::Sha256,
                "juliet",
                "pw",
                Some((ty, vec![0x33; 32])),
            );
            assert_eq!(
                exchange(client, true, &cb, Some(&c)),
                Err(SaslFailure::NotAuthorized)
            );
        }
    }

    #[test]
    fn stripped_channel_binding_in_final_is_not_authorized() {
        // A client-final for a -PLUS exchange that claims "n,," bindings.
        let cb = both_bindings();
        let c = creds(ScramHash::Sha256, "pw");
        let mut client = ScramClient::new(
            ScramHash::Sha256,
            "juliet",
            "pw",
            Some((ChannelBindingType::TlsExporter, vec![0x11; 32])),
        );
        let mut server =
            ScramServer::new(ScramHash::Sha256, true, &cb, &client.client_first()).expect("first");
        let client_final = client
            .handle_server_first(&server.server_first(Some(&c)))
            .expect("server-first");
        let text = String::from_utf8(client_final).expect("utf8");
        let (_, rest) = text.split_once(',').expect("comma");
        let tampered = format!("c=biws,{rest}");
        assert_eq!(
            server.client_final(tampered.as_bytes()),
            Err(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn gs2_flag_y_downgrade_is_detected() {
        let c = creds(ScramHash::Sha1, "pw");
        // The server offers -PLUS but the client believes it does not.
        let client = ScramClient::new(ScramHash::Sha1, "juliet", "pw", None).with_gs2_flag_y();
        assert_eq!(
            exchange(client, false, &both_bindings(), Some(&c)),
            Err(SaslFailure::InvalidMechanism)
        );
        // Without channel binding on the server, "y" is fine.
        let client = ScramClient::new(ScramHash::Sha1, "juliet", "pw", None).with_gs2_flag_y();
        assert_eq!(
            exchange(client, false, &ChannelBindings::default(), Some(&c)),
            Ok(())
        );
        // "n" is fine even when the server offers -PLUS.
        let client = ScramClient::new(ScramHash::Sha1, "juliet", "pw", None);
        assert_eq!(exchange(client, false, &both_bindings(), Some(&c)), Ok(()));
    }

    #[test]
    fn gs2_flag_mechanism_mismatch() {
        let cb = both_bindings();
        let new = |plus: bool, msg: &str| {
            ScramServer::new(ScramHash::Sha256, plus, &cb, msg.as_bytes()).map(|_| ())
        };
        // "p" with the non-PLUS mechanism.
        assert_eq!(
            new(false, "p=tls-exporter,,n=juliet,r=abc"),
            Err(SaslFailure::MalformedRequest)
        );
        // "n" / "y" with the PLUS mechanism.
        assert_eq!(
            new(true, "n,,n=juliet,r=abc"),
            Err(SaslFailure::MalformedRequest)
        );
        assert_eq!(
            new(true, "y,,n=juliet,r=abc"),
            Err(SaslFailure::MalformedRequest)
        );
        // PLUS selected but the connection has no binding at all.
        assert_eq!(
            ScramServer::new(
                ScramHash::Sha256,
                true,
                &ChannelBindings::default(),
                b"p=tls-exporter,,n=juliet,r=abc"
            )
            .map(|_| ()),
            Err(SaslFailure::InvalidMechanism)
        );
        assert_eq!(new(true, "p=tls-exporter,,n=juliet,r=abc"), Ok(()));
    }

    #[test]
    fn username_and_authzid_escaping() {
        let c = creds(ScramHash::Sha256, "pw");
        let mut client = ScramClient::new(ScramHash::Sha256, "a,b=c", "pw", None)
            .with_authzid("x=y,z@example.org");
        let first = client.client_first();
        assert_eq!(
            &first[..first.len() - 24],
            b"n,a=x=3Dy=2Cz@example.org,n=a=2Cb=3Dc,r=".as_slice()
        );
        let mut server = ScramServer::new(
            ScramHash::Sha256,
            false,
            &ChannelBindings::default(),
            &first,
        )
        .expect("client-first");
        assert_eq!(server.username(), "a,b=c");
        assert_eq!(server.authzid(), Some("x=y,z@example.org"));
        let client_final = client
            .handle_server_first(&server.server_first(Some(&c)))
            .expect("server-first");
        let server_final = server.client_final(&client_final).expect("client-final");
        client
            .verify_server_final(&server_final)
            .expect("server-final");

        for bad in [
            "n,,n=a=2Db,r=abc",
            "n,,n=a=,r=abc",
            "n,,n=a=2,r=abc",
            "n,,n=a=2c,r=abc",
            "n,a=x=,,n=a,r=abc",
            "n,a=,n=juliet,r=abc",
            "n,x=y,n=juliet,r=abc",
        ] {
            assert_eq!(
                ScramServer::new(
                    ScramHash::Sha256,
                    false,
                    &ChannelBindings::default(),
                    bad.as_bytes()
                )
                .map(|_| ()),
                Err(SaslFailure::MalformedRequest),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_user_fails_at_the_end() {
        for hash in ScramHash::ALL {
            let mut client = ScramClient::new(hash, "nobody", "pw", None);
            let first = client.client_first();
            let mut server = ScramServer::new(hash, false, &ChannelBindings::default(), &first)
                .expect("client-first");
            let server_first = server.server_first(None);
            let text = String::from_utf8(server_first.clone()).expect("utf8");
            assert!(text.ends_with(",i=4096"), "{text}");
            let client_final = client
                .handle_server_first(&server_first)
                .expect("server-first");
            assert_eq!(
                server.client_final(&client_final),
                Err(SaslFailure::NotAuthorized)
            );

            // The fake salt is stable per username, and differs between
            // usernames.
            let salt_of = |user: &str| {
                let msg = format!("n,,n={user},r=abc");
                let mut s =
                    ScramServer::new(hash, false, &ChannelBindings::default(), msg.as_bytes())
                        .expect("client-first");
                let sf = String::from_utf8(s.server_first(None)).expect("utf8");
                sf.split(',').nth(1).expect("salt").to_owned()
            };
            assert_eq!(salt_of("nobody"), salt_of("nobody"));
            assert_ne!(salt_of("nobody"), salt_of("somebody"));
        }

        // Configurable fake iteration count.
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            &ChannelBindings::default(),
            b"n,,n=nobody,r=abc",
        )
        .expect("client-first");
        server.set_fake_iterations(10000);
        let text = String::from_utf8(server.server_first(None)).expect("utf8");
        assert!(text.ends_with(",i=10000"));
    }

    #[test]
    fn credentials_for_another_hash_are_treated_as_unknown() {
        let c = creds(ScramHash::Sha1, "pw");
        let client = ScramClient::new(ScramHash::Sha256, "juliet", "pw", None);
        assert_eq!(
            exchange(client, false, &ChannelBindings::default(), Some(&c)),
            Err(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn out_of_order_calls() {
        let mut server = ScramServer::new(
            ScramHash::Sha1,
            false,
            &ChannelBindings::default(),
            RFC5802_CLIENT_FIRST.as_bytes(),
        )
        .expect("client-first");
        assert_eq!(
            server.client_final(RFC5802_CLIENT_FINAL.as_bytes()),
            Err(SaslFailure::MalformedRequest)
        );

        let mut client = ScramClient::new(ScramHash::Sha1, "user", "pencil", None);
        assert_eq!(
            client.handle_server_first(RFC5802_SERVER_FIRST.as_bytes()),
            Err(SaslFailure::MalformedRequest)
        );
        assert_eq!(
            client.verify_server_final(RFC5802_SERVER_FINAL.as_bytes()),
            Err(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn malformed_client_first() {
        let cb = both_bindings();
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"n,,r=abc",
            b"n,,n=user",
            b"n,,n=user,",
            b"n,,n=,r=abc",
            b"n,,n=user,r=",
            b"n,,n=user,r=a b",
            b"n,,n=user,r=abc\x7f",
            b"n,,n=user,x=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=user,r=abc,",
            b"n,,n=user,r=abc,1=x",
            b"n,,n=user,r=abc,x=",
            b"x,,n=user,r=abc",
            b"N,,n=user,r=abc",
            b"p=,,n=user,r=abc",
            b"p=tls exporter,,n=user,r=abc",
            b"n,,n=us\0er,r=abc",
            b"n,,n=\xff\xfe,r=abc",
            b"\xc3\x28,,n=user,r=abc",
        ];
        for &case in cases {
            for plus in [false, true] {
                let r = ScramServer::new(ScramHash::Sha256, plus, &cb, case).map(|_| ());
                assert!(r.is_err(), "{case:?} plus={plus}");
            }
            let r = ScramServer::new(ScramHash::Sha256, false, &ChannelBindings::default(), case)
                .map(|_| ());
            assert_eq!(r, Err(SaslFailure::MalformedRequest), "{case:?}");
        }
        // Extensions are allowed.
        assert!(
            ScramServer::new(
                ScramHash::Sha256,
                false,
                &ChannelBindings::default(),
                b"n,,n=user,r=abc,x=1,y=2"
            )
            .is_ok()
        );
    }

    fn fresh_server(hash: ScramHash) -> (ScramServer, ScramClient, Vec<u8>) {
        let c = creds(hash, "pw");
        let mut client = ScramClient::new(hash, "juliet", "pw", None);
        let mut server = ScramServer::new(
            hash,
            false,
            &ChannelBindings::default(),
            &client.client_first(),
        )
        .expect("client-first");
        let client_final = client
            .handle_server_first(&server.server_first(Some(&c)))
            .expect("server-first");
        (server, client, client_final)
    }

    #[test]
    fn malformed_client_final() {
        let (_, _, good) = fresh_server(ScramHash::Sha1);
        let good = String::from_utf8(good).expect("utf8");
        let (c_attr, rest) = good.split_once(',').expect("c");
        let (r_attr, p_attr) = rest.split_once(',').expect("r");
        let malformed = [
            String::new(),
            "garbage".to_owned(),
            format!("{r_attr},{p_attr}"),
            format!("{c_attr},{p_attr}"),
            format!("{c_attr},{r_attr}"),
            format!("{r_attr},{c_attr},{p_attr}"),
            format!("{c_attr},{r_attr},p=!!!notbase64"),
            format!("{c_attr},{r_attr},p="),
            format!("{c_attr},{r_attr},p=AAAA"),
            format!("c=%%%,{r_attr},{p_attr}"),
            format!("{c_attr},{r_attr},1=x,{p_attr}"),
            format!("{c_attr},{r_attr},,{p_attr}"),
            format!("{c_attr},{r_attr},{p_attr},"),
            format!("{c_attr},{r_attr},{p_attr},x=y"),
            format!("{c_attr}\0,{r_attr},{p_attr}"),
        ];
        for case in &malformed {
            let (mut server, _, _) = fresh_server(ScramHash::Sha1);
            assert_eq!(
                server.client_final(case.as_bytes()),
                Err(SaslFailure::MalformedRequest),
                "{case}"
            );
        }
        let (mut server, _, _) = fresh_server(ScramHash::Sha1);
        assert_eq!(
            server.client_final(b"c=biws,r=abc,p=\xff\xfe"),
            Err(SaslFailure::MalformedRequest)
        );

        // Syntactically fine but wrong nonce.
        let (mut server, _, good) = fresh_server(ScramHash::Sha1);
        let good = String::from_utf8(good).expect("utf8");
        let bad_nonce = good.replacen(",r=", ",r=X", 1);
        assert_eq!(
            server.client_final(bad_nonce.as_bytes()),
            Err(SaslFailure::NotAuthorized)
        );

        // Extensions before the proof are allowed.
        let (mut server, _, good) = fresh_server(ScramHash::Sha1);
        let good = String::from_utf8(good).expect("utf8");
        let (without_proof, proof) = good.rsplit_once(",p=").expect("proof");
        let with_ext = format!("{without_proof},x=1,p={proof}");
        // The extension is covered by AuthMessage, so the proof no longer
        // matches, but it must parse.
        assert_eq!(
            server.client_final(with_ext.as_bytes()),
            Err(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn malformed_server_messages_for_client() {
        let server_first_cases: &[&[u8]] = &[
            b"",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=0",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=+1",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=01",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=99999999999",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4294967295",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=,i=4096",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=***,i=4096",
            b"r=fyko+d2lbbFgONRv9qkxdawL,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=XXXX+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            b"m=x,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,",
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j\xff,s=QSXCR+Q6sek8bf92,i=4096",
        ];
        for &case in server_first_cases {
            let mut client = ScramClient::new(ScramHash::Sha1, "user", "pencil", None)
                .with_nonce("fyko+d2lbbFgONRv9qkxdawL");
            client.client_first();
            assert_eq!(
                client.handle_server_first(case),
                Err(SaslFailure::MalformedRequest),
                "{case:?}"
            );
        }

        let mut client = ScramClient::new(ScramHash::Sha1, "user", "pencil", None)
            .with_nonce("fyko+d2lbbFgONRv9qkxdawL");
        client.client_first();
        client
            .handle_server_first(RFC5802_SERVER_FIRST.as_bytes())
            .expect("server-first");
        for (case, expected) in [
            (b"".as_slice(), SaslFailure::MalformedRequest),
            (b"v=", SaslFailure::NotAuthorized),
            (b"v=***", SaslFailure::MalformedRequest),
            (
                b"x=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
                SaslFailure::MalformedRequest,
            ),
            (b"e=invalid-proof", SaslFailure::NotAuthorized),
            (b"\xff", SaslFailure::MalformedRequest),
        ] {
            assert_eq!(client.verify_server_final(case), Err(expected), "{case:?}");
        }
        // Extensions after the verifier are tolerated.
        client
            .verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=,x=1")
            .expect("server-final with extension");
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x5a5a);
        let cb = both_bindings();
        let alphabet = b"npyrcsiemav=,012AZaz+/\0\xff-_.";
        for _ in 0..2000 {
            let len = rng.random_range(0..64);
            let msg: Vec<u8> = if rng.random_bool(0.5) {
                (0..len).map(|_| rng.random()).collect()
            } else {
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            };
            let _ = parse_plain(&msg);
            let _ = decode_sasl_payload(&String::from_utf8_lossy(&msg));
            for hash in ScramHash::ALL {
                for plus in [false, true] {
                    if let Ok(mut server) = ScramServer::new(hash, plus, &cb, &msg) {
                        server.server_first(None);
                        let _ = server.client_final(&msg);
                    }
                }
            }
            let mut client = ScramClient::new(ScramHash::Sha1, "u", "p", None);
            client.client_first();
            let _ = client.handle_server_first(&msg);
            let _ = client.verify_server_final(&msg);
        }
    }

    #[test]
    fn mutated_messages_never_panic() {
        let mut rng = StdRng::seed_from_u64(42);
        let (_, _, good_final) = fresh_server(ScramHash::Sha256);
        let client_first = RFC5802_CLIENT_FIRST.as_bytes();
        let server_first = RFC5802_SERVER_FIRST.as_bytes();
        let cb = both_bindings();
        let mutate = |rng: &mut StdRng, msg: &[u8]| {
            let mut m = msg.to_vec();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..3) {
                    0 if !m.is_empty() => {
                        let i = rng.random_range(0..m.len());
                        m[i] = rng.random();
                    }
                    1 if !m.is_empty() => {
                        let i = rng.random_range(0..m.len());
                        m.remove(i);
                    }
                    _ => {
                        let i = rng.random_range(0..=m.len());
                        m.insert(
                            i,
                            *b",=\0\xc3a".get(rng.random_range(0..5)).unwrap_or(&b'a'),
                        );
                    }
                }
            }
            m
        };
        // Every truncation, plus random mutations.
        for i in 0..=good_final.len() {
            let (mut server, _, _) = fresh_server(ScramHash::Sha256);
            assert!(server.client_final(&good_final[..i]).is_err());
        }
        for _ in 0..300 {
            let (mut server, _, _) = fresh_server(ScramHash::Sha256);
            let _ = server.client_final(&mutate(&mut rng, &good_final));
            let _ = ScramServer::new(ScramHash::Sha1, false, &cb, &mutate(&mut rng, client_first));
            let mut client = ScramClient::new(ScramHash::Sha1, "user", "pencil", None)
                .with_nonce("fyko+d2lbbFgONRv9qkxdawL");
            client.client_first();
            let _ = client.handle_server_first(&mutate(&mut rng, server_first));
        }
    }

    #[test]
    fn plain_parsing() {
        assert_eq!(
            parse_plain(b"\0juliet\0r0m30"),
            Ok((None, "juliet".to_owned(), "r0m30".to_owned()))
        );
        assert_eq!(
            parse_plain(b"juliet@example.org\0juliet\0r0m30"),
            Ok((
                Some("juliet@example.org".to_owned()),
                "juliet".to_owned(),
                "r0m30".to_owned()
            ))
        );
        assert_eq!(
            parse_plain("\0j\u{fc}liet\0p\u{e4}ss w\u{f6}rd".as_bytes()),
            Ok((
                None,
                "j\u{fc}liet".to_owned(),
                "p\u{e4}ss w\u{f6}rd".to_owned()
            ))
        );
        for bad in [
            b"".as_slice(),
            b"\0",
            b"\0\0",
            b"juliet",
            b"\0juliet",
            b"\0juliet\0",
            b"\0\0pw",
            b"a\0b\0c\0d",
            b"\0juliet\0pw\0",
            b"\0jul\xffiet\0pw",
            b"\0juliet\0p\xc3",
            b"\xff\0juliet\0pw",
        ] {
            assert_eq!(
                parse_plain(bad),
                Err(SaslFailure::MalformedRequest),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plain_with_stored_credentials() {
        let c = creds(ScramHash::Sha256, "r0m30");
        let (_, user, pw) = parse_plain(b"\0juliet\0r0m30").expect("plain");
        assert_eq!(user, "juliet");
        assert!(c.verify_password(&pw));
        assert!(!c.verify_password("r0m31"));
        assert!(!c.verify_password(""));
    }

    #[test]
    fn credentials_derivation() {
        let a = ScramCredentials::derive(ScramHash::Sha256, "pw", b"salt", 10);
        let b = ScramCredentials::derive(ScramHash::Sha256, "pw", b"salt", 10);
        assert_eq!(a, b);
        assert_ne!(
            a,
            ScramCredentials::derive(ScramHash::Sha256, "pw", b"salt", 11)
        );
        assert_ne!(
            a,
            ScramCredentials::derive(ScramHash::Sha256, "pw", b"Salt", 10)
        );
        let g1 = ScramCredentials::generate(ScramHash::Sha1, "pw", 2);
        let g2 = ScramCredentials::generate(ScramHash::Sha1, "pw", 2);
        assert_ne!(g1.salt, g2.salt);
        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha1, "pw", b"s", 0).iterations,
            1
        );
    }

    #[test]
    fn names() {
        let expected = [
            "SCRAM-SHA-512-PLUS",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-512",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1",
            "PLAIN",
        ];
        for (m, name) in Mechanism::ALL.into_iter().zip(expected) {
            assert_eq!(m.name(), name);
            assert_eq!(Mechanism::from_name(name), Some(m));
            assert_eq!(m.to_string(), name);
        }
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(Mechanism::from_name("SCRAM-SHA-384"), None);
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
        assert!(!Mechanism::Plain.is_plus());
        for h in ScramHash::ALL {
            assert_eq!(ScramHash::from_name(h.name()), Some(h));
        }
        assert_eq!(ScramHash::Sha1.name(), "SHA-1");
        assert_eq!(ScramHash::Sha256.name(), "SHA-256");
        assert_eq!(ScramHash::Sha512.name(), "SHA-512");
        assert_eq!(ChannelBindingType::TlsExporter.name(), "tls-exporter");
        assert_eq!(
            ChannelBindingType::TlsServerEndPoint.name(),
            "tls-server-end-point"
        );
        for t in ChannelBindingType::ALL {
            assert_eq!(ChannelBindingType::from_name(t.name()), Some(t));
        }
        for f in SaslFailure::ALL {
            assert_eq!(SaslFailure::from_condition(f.condition()), Some(f));
            assert_eq!(f.to_string(), f.condition());
        }
        assert_eq!(SaslFailure::NotAuthorized.condition(), "not-authorized");
        assert_eq!(
            SaslFailure::TemporaryAuthFailure.condition(),
            "temporary-auth-failure"
        );
    }

    #[test]
    fn payload_encoding() {
        assert_eq!(decode_sasl_payload(""), Ok(Vec::new()));
        assert_eq!(decode_sasl_payload("="), Ok(Vec::new()));
        assert_eq!(decode_sasl_payload(" biws\n"), Ok(b"n,,".to_vec()));
        assert_eq!(decode_sasl_payload("bi ws"), Ok(b"n,,".to_vec()));
        assert_eq!(
            decode_sasl_payload("biw"),
            Err(SaslFailure::IncorrectEncoding)
        );
        assert_eq!(
            decode_sasl_payload("b!ws"),
            Err(SaslFailure::IncorrectEncoding)
        );
        assert_eq!(encode_sasl_payload(b""), "=");
        assert_eq!(encode_sasl_payload(b"n,,"), "biws");
    }

    /// What a TLS 1.3 connection offers: `tls-exporter` and
    /// `tls-server-end-point`, never `tls-unique`.
    fn tls13_bindings() -> ChannelBindings {
        both_bindings()
    }

    /// What a TLS 1.2 connection offers here: `tls-server-end-point` only.
    fn tls12_bindings() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: None,
            tls_server_end_point: Some(vec![0x22; 32]),
        }
    }

    fn first_message(hash: ScramHash, plus: bool, cb: &ChannelBindings, msg: &str) -> SaslFailure {
        match ScramServer::new(hash, plus, cb, msg.as_bytes()) {
            Ok(_) => panic!("{msg:?} was accepted"),
            Err(f) => f,
        }
    }

    /// Debian's slixmpp 1.8.3 on a TLS 1.3 connection: `p=tls-unique` with
    /// every -PLUS mechanism, then `y` with every plain SCRAM one. Each is
    /// refused as negotiation (invalid-mechanism), never as not-authorized,
    /// so none of them may count as a password guess.
    #[test]
    fn slixmpp_tls_unique_then_flag_y_on_tls13() {
        let cb = tls13_bindings();
        for hash in ScramHash::ALL {
            assert_eq!(
                first_message(hash, true, &cb, "p=tls-unique,,n=juliet,r=0123456789"),
                SaslFailure::InvalidMechanism,
                "{hash}-PLUS with tls-unique"
            );
        }
        for hash in ScramHash::ALL {
            assert_eq!(
                first_message(hash, false, &cb, "y,,n=juliet,r=0123456789"),
                SaslFailure::InvalidMechanism,
                "{hash} with y"
            );
        }
        // The same client once it says "n" (slixmpp ≥ 1.8.5 on TLS 1.3, or
        // any XEP-0440 client without a common binding type) logs in.
        for hash in ScramHash::ALL {
            let c = creds(hash, "pw");
            let client = ScramClient::new(hash, "juliet", "pw", None);
            assert_eq!(exchange(client, false, &cb, Some(&c)), Ok(()), "{hash} n");
        }
    }

    /// `y` is RFC 5802's downgrade detector: refused whenever -PLUS is
    /// offered (whatever binding types), accepted when it is not.
    #[test]
    fn gs2_flag_y_with_and_without_plus_advertised() {
        let c = creds(ScramHash::Sha256, "pw");
        for cb in [tls13_bindings(), tls12_bindings()] {
            let client =
                ScramClient::new(ScramHash::Sha256, "juliet", "pw", None).with_gs2_flag_y();
            assert_eq!(
                exchange(client, false, &cb, Some(&c)),
                Err(SaslFailure::InvalidMechanism),
                "{cb:?}"
            );
        }
        let none = ChannelBindings::default();
        let client = ScramClient::new(ScramHash::Sha256, "juliet", "pw", None).with_gs2_flag_y();
        assert_eq!(exchange(client, false, &none, Some(&c)), Ok(()));
        // A `y` client with the wrong password is a credential failure.
        let client = ScramClient::new(ScramHash::Sha256, "juliet", "bad", None).with_gs2_flag_y();
        assert_eq!(
            exchange(client, false, &none, Some(&c)),
            Err(SaslFailure::NotAuthorized)
        );
        // The c= attribute must repeat the `y` header exactly: a client
        // that said `y` first and `n` in its final message is refused.
        let mut client = ScramClient::new(ScramHash::Sha256, "juliet", "pw", None);
        let first = client.client_first();
        let mut server = ScramServer::new(
            ScramHash::Sha256,
            false,
            &none,
            &[b"y".as_slice(), &first[1..]].concat(),
        )
        .expect("y accepted without -PLUS");
        let client_final = client
            .handle_server_first(&server.server_first(Some(&c)))
            .expect("server-first");
        assert_eq!(
            server.client_final(&client_final),
            Err(SaslFailure::NotAuthorized)
        );
    }

    /// `n` is accepted with or without -PLUS on offer.
    #[test]
    fn gs2_flag_n_is_always_accepted() {
        let c = creds(ScramHash::Sha512, "pw");
        for cb in [
            tls13_bindings(),
            tls12_bindings(),
            ChannelBindings::default(),
        ] {
            let client = ScramClient::new(ScramHash::Sha512, "juliet", "pw", None);
            assert_eq!(exchange(client, false, &cb, Some(&c)), Ok(()), "{cb:?}");
        }
    }

    /// `tls-exporter` on TLS 1.3: the right value logs in; a value off by
    /// one bit, or a value for another connection, is not-authorized
    /// (checked in constant time with the proof).
    #[test]
    fn tls_exporter_good_and_tampered() {
        let cb = tls13_bindings();
        let good = cb
            .get(ChannelBindingType::TlsExporter)
            .expect("exporter")
            .to_vec();
        for hash in ScramHash::ALL {
            let c = creds(hash, "pw");
            let client = ScramClient::new(
                hash,
                "juliet",
                "pw",
                Some((ChannelBindingType::TlsExporter, good.clone())),
            );
            assert_eq!(exchange(client, true, &cb, Some(&c)), Ok(()), "{hash}");
            let mut flipped = good.clone();
            flipped[31] ^= 0x01;
            let other_connection = vec![0x5a; 32];
            for bad in [flipped, other_connection, Vec::new()] {
                let client = ScramClient::new(
                    hash,
                    "juliet",
                    "pw",
                    Some((ChannelBindingType::TlsExporter, bad)),
                );
                assert_eq!(
                    exchange(client, true, &cb, Some(&c)),
                    Err(SaslFailure::NotAuthorized),
                    "{hash}"
                );
            }
            // The client binds to the server-end-point value while claiming
            // tls-exporter.
            let client = ScramClient::new(
                hash,
                "juliet",
                "pw",
                Some((
                    ChannelBindingType::TlsExporter,
                    cb.get(ChannelBindingType::TlsServerEndPoint)
                        .expect("endpoint")
                        .to_vec(),
                )),
            );
            assert_eq!(
                exchange(client, true, &cb, Some(&c)),
                Err(SaslFailure::NotAuthorized),
                "{hash}"
            );
        }
    }

    /// `tls-exporter` over TLS 1.2 (not offered there) and `tls-unique`
    /// over TLS 1.3 (undefined by RFC 9266) are unsupported types.
    #[test]
    fn binding_type_not_on_this_connection() {
        assert_eq!(
            first_message(
                ScramHash::Sha256,
                true,
                &tls12_bindings(),
                "p=tls-exporter,,n=juliet,r=abc"
            ),
            SaslFailure::InvalidMechanism
        );
        assert_eq!(
            first_message(
                ScramHash::Sha256,
                true,
                &tls13_bindings(),
                "p=tls-unique,,n=juliet,r=abc"
            ),
            SaslFailure::InvalidMechanism
        );
        // tls-server-end-point works on both.
        let c = creds(ScramHash::Sha256, "pw");
        for cb in [tls12_bindings(), tls13_bindings()] {
            let data = cb
                .get(ChannelBindingType::TlsServerEndPoint)
                .expect("endpoint")
                .to_vec();
            let client = ScramClient::new(
                ScramHash::Sha256,
                "juliet",
                "pw",
                Some((ChannelBindingType::TlsServerEndPoint, data)),
            );
            assert_eq!(exchange(client, true, &cb, Some(&c)), Ok(()), "{cb:?}");
        }
    }

    /// A well-formed but unknown type is a negotiation failure; a badly
    /// formed one is malformed.
    #[test]
    fn unknown_binding_type() {
        let cb = tls13_bindings();
        for name in ["tls-unique-for-telnet", "x-made-up", "TLS-EXPORTER"] {
            assert_eq!(
                first_message(
                    ScramHash::Sha1,
                    true,
                    &cb,
                    &format!("p={name},,n=juliet,r=abc")
                ),
                SaslFailure::InvalidMechanism,
                "{name}"
            );
        }
        for flag in ["p=", "p=tls_exporter", "p=tls exporter", "x", "yes"] {
            assert_eq!(
                first_message(
                    ScramHash::Sha1,
                    true,
                    &cb,
                    &format!("{flag},,n=juliet,r=abc")
                ),
                SaslFailure::MalformedRequest,
                "{flag}"
            );
        }
    }

    /// The negotiation refusals are never the credential condition, so a
    /// caller that counts not-authorized counts password guesses only.
    #[test]
    fn negotiation_refusals_are_not_credential_failures() {
        let cb = tls13_bindings();
        let refused = [
            (true, "p=tls-unique,,n=juliet,r=abc"),
            (true, "p=unknown,,n=juliet,r=abc"),
            (true, "n,,n=juliet,r=abc"),
            (true, "y,,n=juliet,r=abc"),
            (false, "y,,n=juliet,r=abc"),
            (false, "p=tls-exporter,,n=juliet,r=abc"),
        ];
        for (plus, msg) in refused {
            assert_ne!(
                first_message(ScramHash::Sha256, plus, &cb, msg),
                SaslFailure::NotAuthorized,
                "{plus} {msg}"
            );
        }
        assert_ne!(
            first_message(
                ScramHash::Sha256,
                true,
                &ChannelBindings::default(),
                "p=tls-exporter,,n=juliet,r=abc"
            ),
            SaslFailure::NotAuthorized
        );
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let client = ScramClient::new(ScramHash::Sha1, "juliet", "hunter2", None);
        assert!(!format!("{client:?}").contains("hunter2"));
        let cb = both_bindings();
        assert!(!format!("{cb:?}").contains("17"));
    }
}
