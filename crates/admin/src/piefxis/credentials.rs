//! Credentials in a XEP-0227 file: `<scram-credentials/>`
//! (`urn:xmpp:pie:0#scram`), ejabberd's `password='scram:…'` form, and
//! SCRAM values base64-encoded twice (as ejabberd 23.01 writes them).

use super::NS_SCRAM;
use super::PieError;
use super::read::Node;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use palaver_proto::sasl::{ScramCredentials, ScramHash};

/// `SCRAM-SHA-256` (or its `-PLUS` variant, same credentials) → hash.
pub(super) fn mechanism_hash(mech: &str) -> Option<ScramHash> {
    let m = mech.strip_suffix("-PLUS").unwrap_or(mech);
    ScramHash::from_name(m.strip_prefix("SCRAM-")?)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(clean.as_bytes()).ok()
}

/// Credentials from base64 stored key, server key and salt; `true` when
/// they were base64-encoded twice (ejabberd 23.01 exports its stored base64
/// text base64-encoded again).
fn scram_values(
    hash: ScramHash,
    iterations: u32,
    stored: &str,
    server: &str,
    salt: &str,
) -> Result<(ScramCredentials, bool), String> {
    let len = hash.output_len();
    let stored1 = b64(stored).ok_or("stored-key is not base64")?;
    let server1 = b64(server).ok_or("server-key is not base64")?;
    let salt1 = b64(salt).ok_or("salt is not base64")?;
    let creds = |stored_key, server_key, salt| ScramCredentials {
        hash,
        salt,
        iterations,
        stored_key,
        server_key,
    };
    if stored1.len() == len && server1.len() == len {
        return Ok((creds(stored1, server1, salt1), false));
    }
    let again = |v: &[u8]| std::str::from_utf8(v).ok().and_then(b64);
    if let (Some(st), Some(sv), Some(sa)) = (again(&stored1), again(&server1), again(&salt1))
        && st.len() == len
        && sv.len() == len
    {
        return Ok((creds(st, sv, sa), true));
    }
    Err(format!(
        "stored-key and server-key must be {len} bytes for SCRAM-{hash} (found {} and {})",
        stored1.len(),
        server1.len()
    ))
}

fn iterations(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "iteration count `{}` is not a positive integer",
            s.trim()
        )),
    }
}

pub(super) fn scram_element(
    node: &Node,
    hash: ScramHash,
    jid: &str,
) -> Result<(ScramCredentials, bool), PieError> {
    let one = |name: &str| -> Result<String, PieError> {
        let mut it = node.children().filter(|c| c.is(name, NS_SCRAM));
        match (it.next(), it.next()) {
            (Some(c), None) => Ok(c.text()),
            (None, _) => {
                Err(node.invalid(format!("{jid}: <scram-credentials/> without <{name}/>")))
            }
            (Some(_), Some(c)) => Err(c.invalid(format!(
                "{jid}: <scram-credentials/> with a second <{name}/>"
            ))),
        }
    };
    let iter = iterations(&one("iter-count")?).map_err(|m| node.invalid(format!("{jid}: {m}")))?;
    scram_values(
        hash,
        iter,
        &one("stored-key")?,
        &one("server-key")?,
        &one("salt")?,
    )
    .map_err(|m| node.invalid(format!("{jid}: {m}")))
}

/// ejabberd's `password='scram:StoredKey,ServerKey,Salt,IterationCount'`
/// (SCRAM-SHA-1). `None` when the value does not have that form (then it is
/// a plaintext password).
type ScramPassword = Result<(ScramCredentials, bool), String>;

pub(super) fn ejabberd_scram_password(p: &str) -> Option<ScramPassword> {
    let rest = p.strip_prefix("scram:")?;
    let parts: Vec<&str> = rest.split(',').collect();
    let [stored, server, salt, iter] = parts[..] else {
        return None;
    };
    if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(iterations(iter).and_then(|n| scram_values(ScramHash::Sha1, n, stored, server, salt)))
}
