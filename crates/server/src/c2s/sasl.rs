//! SASL authentication (RFC 6120 §6): PLAIN and SCRAM (with channel
//! binding), failures counted against the stream.

use super::session::{C2sSession, Next};
use crate::auth::AuthOutcome;
use crate::host::Host;
use jid::BareJid;
use minidom::Element;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::sasl::{
    Mechanism, SaslFailure, ScramServer, decode_sasl_payload, encode_sasl_payload, parse_plain,
};
use palaver_proto::writer::escape_into;
use std::sync::Arc;

/// Wrong credentials (not-authorized) before the stream is closed.
const MAX_AUTH_FAILURES: u8 = 5;

/// An exchange in progress.
pub(super) enum SaslState {
    None,
    /// SCRAM (or PLAIN) waiting for the client's first message (empty initial response).
    ScramStart(Mechanism),
    /// SCRAM waiting for client-final.
    Scram(Box<ScramServer>),
}

impl C2sSession {
    /// A challenge (RFC 6120, or XEP-0388 during a SASL2 exchange).
    pub(super) fn write_challenge(&mut self, data: &[u8]) {
        let ns = if self.sasl2.is_some() {
            super::sasl2::NS
        } else {
            "urn:ietf:params:xml:ns:xmpp-sasl"
        };
        self.out.element_with(|out, _| {
            out.push_str("<challenge xmlns='");
            out.push_str(ns);
            if data.is_empty() {
                out.push_str("'/>");
                return;
            }
            out.push_str("'>");
            out.push_str(&encode_sasl_payload(data));
            out.push_str("</challenge>");
        });
    }

    pub(super) fn sasl_failure(&mut self, f: SaslFailure, text: Option<&str>) -> Next {
        self.sasl = SaslState::None;
        let sasl2 = self.sasl2.take().is_some();
        self.out.element_with(|out, _| {
            if sasl2 {
                out.push_str("<failure xmlns='urn:xmpp:sasl:2'><");
                out.push_str(f.condition());
                out.push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
            } else {
                out.push_str("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><");
                out.push_str(f.condition());
                out.push_str("/>");
            }
            if let Some(t) = text {
                out.push_str("<text xml:lang='en'>");
                escape_into(out, t);
                out.push_str("</text>");
            }
            out.push_str("</failure>");
        });
        // Only wrong credentials count towards the limit; negotiation
        // (invalid-mechanism, a refused channel-binding type or `y` flag,
        // aborted, malformed) never does, so a client may try its mechanisms.
        if let Some(h) = &self.host
            && matches!(
                f,
                SaslFailure::NotAuthorized | SaslFailure::TemporaryAuthFailure
            )
        {
            let outcome = match f {
                SaslFailure::NotAuthorized => AuthOutcome::Denied,
                _ => AuthOutcome::Temporary,
            };
            self.core.auth.record(&h.name, &outcome);
        }
        if f == SaslFailure::NotAuthorized {
            self.auth_failures += 1;
            self.report_auth_failure();
        }
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return self.stream_error(StreamError::with_text(
                SC::PolicyViolation,
                "too many authentication failures",
            ));
        }
        Next::Continue
    }

    /// Log a failed login with the address (a line fail2ban can match) and
    /// run the [`AuthFailed`](crate::hooks::AuthFailed) hooks.
    fn report_auth_failure(&mut self) {
        let user = std::mem::take(&mut self.last_auth_user);
        let host = self
            .host
            .as_ref()
            .map(|h| h.name.clone())
            .unwrap_or_default();
        tracing::warn!(
            "failed c2s authentication for {user}@{host} from {}",
            self.peer.ip()
        );
        if let Some(h) = self.host.clone()
            && h.hooks().has::<crate::hooks::AuthFailed>()
        {
            let mut arg = crate::hooks::AuthFailure {
                ip: self.peer.ip(),
                user,
                host,
                delay: std::time::Duration::ZERO,
            };
            self.core
                .cx(&h)
                .run_hook::<crate::hooks::AuthFailed>(None, &mut arg);
            if !arg.delay.is_zero() {
                self.auth_delay = Some(arg.delay);
            }
        }
    }

    pub(super) fn sasl_success(&mut self, user: String, additional: Option<Vec<u8>>) -> Next {
        self.sasl = SaslState::None;
        if let Some(h) = &self.host {
            self.core.auth.record(&h.name, &AuthOutcome::Ok);
        }
        if let Some(s2) = self.sasl2.as_mut() {
            // XEP-0388: the SASL2 exchange finishes the success itself
            // (inline bind, resumption, token), without a stream restart.
            s2.succeeded = Some(additional);
            tracing::debug!(peer = %self.peer, user, "authenticated (SASL2)");
            self.user = Some(user);
            return Next::Continue;
        }
        self.out.element_with(|out, _| {
            out.push_str("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'");
            match additional {
                Some(data) => {
                    out.push('>');
                    out.push_str(&encode_sasl_payload(&data));
                    out.push_str("</success>");
                }
                None => out.push_str("/>"),
            }
        });
        tracing::debug!(peer = %self.peer, user, "authenticated");
        self.user = Some(user);
        // No longer counted against its address as unauthenticated.
        self.unauth = None;
        Next::Restart
    }

    /// Normalise a SASL username to a node of this host.
    pub(super) fn nodeprep(&self, user: &str) -> Option<String> {
        let host = self.host.as_ref()?;
        let bare = BareJid::new(&format!("{user}@{}", host.name)).ok()?;
        let node = bare.node()?.as_str().to_string();
        // Reject usernames that smuggle a different domain or resource.
        if user.contains('@') || user.contains('/') {
            return None;
        }
        Some(node)
    }

    pub(super) async fn handle_sasl(&mut self, el: Element) -> Result<Next, StreamError> {
        let Some(host) = self.host.clone() else {
            return Err(StreamError::new(SC::InternalServerError));
        };
        match el.name() {
            "abort" => Ok(self.sasl_failure(SaslFailure::Aborted, None)),
            "auth" => {
                if !matches!(self.sasl, SaslState::None) {
                    return Ok(self.sasl_failure(
                        SaslFailure::MalformedRequest,
                        Some("exchange in progress"),
                    ));
                }
                let Some(mech) = el.attr("mechanism").and_then(Mechanism::from_name) else {
                    return Ok(self.sasl_failure(SaslFailure::InvalidMechanism, None));
                };
                if mech == Mechanism::Plain && !self.plain_allowed() {
                    return Ok(self.sasl_failure(SaslFailure::EncryptionRequired, None));
                }
                if !self.offers(mech) {
                    return Ok(self.sasl_failure(SaslFailure::InvalidMechanism, None));
                }
                let data = match decode_sasl_payload(&el.text()) {
                    Ok(d) => d,
                    Err(f) => return Ok(self.sasl_failure(f, None)),
                };
                match mech {
                    Mechanism::Plain => {
                        if data.is_empty() {
                            // Empty initial response: ask for the credentials.
                            self.write_challenge(&[]);
                            self.sasl = SaslState::ScramStart(Mechanism::Plain);
                            return Ok(Next::Continue);
                        }
                        Ok(self.plain(&host, &data).await)
                    }
                    // RFC 4505: the optional trace data is ignored; the
                    // session gets a fresh random user name.
                    Mechanism::Anonymous => {
                        let node = format!("anon-{:016x}", rand::random::<u64>());
                        Ok(self.sasl_success(node, None))
                    }
                    Mechanism::Scram { .. } => {
                        if data.is_empty() {
                            self.write_challenge(&[]);
                            self.sasl = SaslState::ScramStart(mech);
                            return Ok(Next::Continue);
                        }
                        Ok(self.scram_first(&host, mech, &data).await)
                    }
                }
            }
            "response" => {
                let data = match decode_sasl_payload(&el.text()) {
                    Ok(d) => d,
                    Err(f) => return Ok(self.sasl_failure(f, None)),
                };
                match std::mem::replace(&mut self.sasl, SaslState::None) {
                    SaslState::None => Ok(self.sasl_failure(
                        SaslFailure::MalformedRequest,
                        Some("no exchange in progress"),
                    )),
                    SaslState::ScramStart(Mechanism::Plain) => Ok(self.plain(&host, &data).await),
                    SaslState::ScramStart(mech) => Ok(self.scram_first(&host, mech, &data).await),
                    SaslState::Scram(mut server) => match server.client_final(&data) {
                        Ok(v) => {
                            let user = server.username().to_string();
                            match self.nodeprep(&user) {
                                Some(node) => Ok(self.sasl_success(node, Some(v))),
                                None => Ok(self.sasl_failure(SaslFailure::NotAuthorized, None)),
                            }
                        }
                        Err(f) => Ok(self.sasl_failure(f, None)),
                    },
                }
            }
            _ => Err(StreamError::with_text(
                SC::UnsupportedStanzaType,
                "unknown SASL element",
            )),
        }
    }

    fn authzid_ok(&self, authzid: Option<&str>, node: &str, host: &Host) -> bool {
        match authzid {
            None => true,
            Some(a) => BareJid::new(a).ok().is_some_and(|j| {
                j.node().map(|n| n.as_str()) == Some(node) && j.domain().as_str() == host.name
            }),
        }
    }

    async fn plain(&mut self, host: &Arc<Host>, data: &[u8]) -> Next {
        let (authzid, authcid, password) = match parse_plain(data) {
            Ok(p) => p,
            Err(f) => return self.sasl_failure(f, None),
        };
        self.last_auth_user = authcid.clone();
        let Some(node) = self.nodeprep(&authcid) else {
            return self.sasl_failure(SaslFailure::NotAuthorized, None);
        };
        if !self.authzid_ok(authzid.as_deref(), &node, host) {
            return self.sasl_failure(SaslFailure::InvalidAuthzid, None);
        }
        match self
            .core
            .auth
            .check_password(&host.name, &node, &password)
            .await
        {
            AuthOutcome::Ok => self.sasl_success(node, None),
            AuthOutcome::Denied => self.sasl_failure(SaslFailure::NotAuthorized, None),
            AuthOutcome::Temporary => self.sasl_failure(SaslFailure::TemporaryAuthFailure, None),
        }
    }

    async fn scram_first(&mut self, host: &Arc<Host>, mech: Mechanism, data: &[u8]) -> Next {
        let Mechanism::Scram { hash, plus } = mech else {
            return self.sasl_failure(SaslFailure::InvalidMechanism, None);
        };
        let mut server = match ScramServer::new(hash, plus, &self.cb, data) {
            Ok(s) => s,
            Err(f) => return self.sasl_failure(f, None),
        };
        self.last_auth_user = server.username().to_string();
        let node = self.nodeprep(server.username());
        if let Some(node) = &node
            && !self.authzid_ok(server.authzid(), node, host)
        {
            return self.sasl_failure(SaslFailure::InvalidAuthzid, None);
        }
        let creds = match &node {
            Some(n) => match self.core.auth.credentials(&host.name, n, hash).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "credential lookup failed");
                    return self.sasl_failure(SaslFailure::TemporaryAuthFailure, None);
                }
            },
            None => None,
        };
        let challenge = server.server_first(creds.as_ref());
        self.write_challenge(&challenge);
        self.sasl = SaslState::Scram(Box::new(server));
        Next::Continue
    }
}
