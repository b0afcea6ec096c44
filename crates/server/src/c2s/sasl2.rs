//! XEP-0388 Extensible SASL Profile (SASL2), with XEP-0484 FAST.
//!
//! Offered beside RFC 6120 SASL (`<authentication xmlns='urn:xmpp:sasl:2'>`
//! in the pre-authentication features, with the same mechanisms); clients
//! that only know RFC 6120 are not affected. An `<authenticate/>` runs the
//! same mechanisms as RFC 6120 (`sasl.rs` writes its challenges and
//! failures in the SASL2 namespace while an exchange is one), and its
//! success is richer and needs no stream restart:
//!
//! - `<resume xmlns='urn:xmpp:sm:3'/>` inline: the XEP-0198 session is
//!   resumed (its `<resumed/>` or `<failed/>` inside `<success/>`, the
//!   unacknowledged stanzas after it);
//! - `<bind xmlns='urn:xmpp:bind:0'/>` inline (XEP-0386, `bind2.rs`);
//! - `<request-token xmlns='urn:xmpp:fast:0' mechanism='…'/>`: a FAST
//!   token for the client's user-agent id, bound to that mechanism
//!   (`mod_auth_fast` keeps them, see
//!   [`FastTokens`](crate::module::FastTokens)), used later in one round
//!   trip.
//!
//! FAST mechanisms (the Hashed Token family, proof `HMAC-SHA-256(token,
//! "Initiator" || cb-data)`): `HT-SHA-256-NONE` always;
//! `HT-SHA-256-EXPR` (`tls-exporter`, RFC 9266) on TLS 1.3;
//! `HT-SHA-256-ENDP` (`tls-server-end-point`, RFC 5929) on any TLS.
//! `HT-SHA-256-UNIQ` (`tls-unique`) is never offered: rustls does not
//! expose the TLS 1.2 Finished message it is made of (and TLS 1.3 has no
//! `tls-unique`). 0-RTT is not offered either (no `tls-0rtt`), but a
//! `<fast count='…'/>` is honoured as the XEP says: it must grow with
//! every use of a token, so a replayed request is refused.

use super::output::{Framing, OutFrame, Output};
use super::session::{C2sSession, Next};
use crate::module::{FastAttempt, FastVerdict};
use hmac::{Hmac, Mac};
use minidom::Element;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::ns;
use palaver_proto::sasl::{
    ChannelBindingType, SaslFailure, decode_sasl_payload, encode_sasl_payload,
};
use palaver_proto::stanza::attr_name;
use palaver_proto::writer::escape_into;

/// Namespace of XEP-0388.
pub const NS: &str = "urn:xmpp:sasl:2";
/// Namespace of XEP-0484.
pub const NS_FAST: &str = "urn:xmpp:fast:0";
/// The FAST mechanism without channel binding.
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";
/// The FAST mechanism bound to `tls-exporter` (TLS 1.3 only).
pub const HT_SHA_256_EXPR: &str = "HT-SHA-256-EXPR";
/// The FAST mechanism bound to `tls-server-end-point`.
pub const HT_SHA_256_ENDP: &str = "HT-SHA-256-ENDP";
/// The FAST mechanism bound to `tls-unique`: known, never offered.
pub const HT_SHA_256_UNIQ: &str = "HT-SHA-256-UNIQ";

/// A SASL2 exchange in progress.
#[derive(Default)]
pub(crate) struct Sasl2 {
    /// Set by `sasl_success`: the mechanism's additional data.
    pub(super) succeeded: Option<Option<Vec<u8>>>,
    /// The client's `<user-agent id='…'/>`.
    agent: Option<String>,
    bind: Option<Element>,
    resume: Option<Element>,
    /// `<request-token mechanism='…'/>`: the mechanism the token is for.
    request_token: Option<String>,
    /// A FAST login: the mechanism used, and whether that token is due
    /// for rotation (a new one is then issued unprompted).
    fast: Option<(String, bool)>,
    /// `<fast invalidate='true'/>`.
    invalidate: bool,
}

fn ht(token: &str, label: &[u8], cb: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()) else {
        return Vec::new();
    };
    mac.update(label);
    mac.update(cb);
    mac.finalize().into_bytes().to_vec()
}

impl C2sSession {
    /// The `<authentication/>` feature (before authentication).
    pub(super) fn sasl2_feature(&self, s: &mut String, mechanisms: &str) {
        let Some(host) = self.host.as_ref() else {
            return;
        };
        s.push_str("<authentication xmlns='urn:xmpp:sasl:2'>");
        s.push_str(mechanisms);
        s.push_str("<inline>");
        s.push_str("<bind xmlns='urn:xmpp:bind:0'><inline>");
        let mut feats: Vec<&str> = host
            .regs
            .bind2_features
            .iter()
            .map(String::as_str)
            .collect();
        if self.stream_mgmt_config().is_some() {
            feats.push(super::SM_NS);
        }
        for f in feats {
            s.push_str("<feature var='");
            escape_into(s, f);
            s.push_str("'/>");
        }
        s.push_str("</inline></bind>");
        if self
            .stream_mgmt_config()
            .is_some_and(|c| c.resume_timeout > 0)
        {
            s.push_str("<sm xmlns='urn:xmpp:sm:3'/>");
        }
        let fast = self.fast_mechanisms();
        if host.regs.fast.is_some() && !fast.is_empty() {
            s.push_str("<fast xmlns='urn:xmpp:fast:0'>");
            for m in fast {
                s.push_str("<mechanism>");
                s.push_str(m);
                s.push_str("</mechanism>");
            }
            s.push_str("</fast>");
        }
        s.push_str("</inline></authentication>");
    }

    /// The FAST mechanisms this connection can use, channel-bound first;
    /// none without TLS (XEP-0484 §8: FAST "MUST only be performed over a
    /// secure connection": anyone who sees a token login can replay it).
    fn fast_mechanisms(&self) -> Vec<&'static str> {
        if !self.secure {
            return Vec::new();
        }
        let mut m = Vec::with_capacity(3);
        if self.cb.get(ChannelBindingType::TlsExporter).is_some() {
            m.push(HT_SHA_256_EXPR);
        }
        if self.cb.get(ChannelBindingType::TlsServerEndPoint).is_some() {
            m.push(HT_SHA_256_ENDP);
        }
        m.push(HT_SHA_256_NONE);
        m.retain(|name| !self.mechanism_disabled(name));
        m
    }

    /// The channel-binding data of a FAST mechanism on this connection;
    /// `None` when the mechanism is not available here.
    fn fast_cb(&self, mechanism: &str) -> Option<Vec<u8>> {
        let ty = match mechanism {
            HT_SHA_256_NONE => return Some(Vec::new()),
            HT_SHA_256_EXPR => ChannelBindingType::TlsExporter,
            HT_SHA_256_ENDP => ChannelBindingType::TlsServerEndPoint,
            // rustls has no tls-unique: never offered, refused if tried.
            HT_SHA_256_UNIQ => return None,
            _ => return None,
        };
        self.cb.get(ty).map(<[u8]>::to_vec)
    }

    /// A XEP-0388 element before authentication.
    pub(super) async fn handle_sasl2(&mut self, el: Element) -> Result<Next, StreamError> {
        if self.user.is_some() {
            return Err(StreamError::with_text(
                SC::PolicyViolation,
                "already authenticated",
            ));
        }
        let next = match el.name() {
            "authenticate" => {
                if self.sasl2.is_some() {
                    return Ok(self.sasl_failure(
                        SaslFailure::MalformedRequest,
                        Some("exchange in progress"),
                    ));
                }
                let mechanism = el.attr("mechanism").unwrap_or_default().to_string();
                let initial = el.get_child("initial-response", NS).map(|r| r.text());
                let mut s2 = Sasl2 {
                    agent: el
                        .get_child("user-agent", NS)
                        .and_then(|u| u.attr("id"))
                        .filter(|id| !id.is_empty() && id.len() <= 256)
                        .map(str::to_string),
                    bind: el.get_child("bind", super::bind2::NS).cloned(),
                    resume: el.get_child("resume", super::SM_NS).cloned(),
                    // A token is bound to the mechanism asked for (§3.2):
                    // one this connection does not offer gets no token.
                    request_token: el
                        .get_child("request-token", NS_FAST)
                        .and_then(|r| r.attr("mechanism"))
                        .filter(|m| self.fast_mechanisms().contains(m))
                        .map(str::to_string),
                    ..Sasl2::default()
                };
                if s2.bind.is_some() && s2.resume.is_some() {
                    // Resumption wins; a failed one leaves the client to bind.
                    s2.bind = None;
                }
                self.sasl2 = Some(Box::new(s2));
                if mechanism.starts_with("HT-") {
                    let fast = el.get_child("fast", NS_FAST);
                    self.fast_auth(&mechanism, initial.as_deref().unwrap_or(""), fast)
                        .await
                } else {
                    let mut auth = Element::builder("auth", ns::SASL)
                        .attr(attr_name("mechanism"), mechanism)
                        .build();
                    if let Some(i) = initial {
                        auth.append_text(i);
                    }
                    self.handle_sasl(auth).await?
                }
            }
            "response" | "abort" => {
                if self.sasl2.is_none() {
                    return Ok(self.sasl_failure(
                        SaslFailure::MalformedRequest,
                        Some("no exchange in progress"),
                    ));
                }
                let mut e = Element::bare(el.name(), ns::SASL);
                e.append_text(el.text());
                self.handle_sasl(e).await?
            }
            other => {
                return Err(StreamError::with_text(
                    SC::UnsupportedStanzaType,
                    format!("<{other}/> is not supported"),
                ));
            }
        };
        if self.sasl2.as_ref().is_some_and(|s| s.succeeded.is_some()) {
            self.sasl2_success().await;
        }
        Ok(next)
    }

    /// An `HT-SHA-256-*` login (XEP-0484): `authcid NUL HMAC(token,
    /// "Initiator" || cb-data)`, with `<fast count='…' invalidate='…'/>`.
    async fn fast_auth(
        &mut self,
        mechanism: &str,
        initial: &str,
        fast_el: Option<&Element>,
    ) -> Next {
        let Some(host) = self.host.clone() else {
            return self.sasl_failure(SaslFailure::MalformedRequest, None);
        };
        let Some(fast) = host.regs.fast.clone() else {
            return self.sasl_failure(SaslFailure::InvalidMechanism, None);
        };
        // Only what this connection offers (no UNIQ; EXPR on TLS 1.3,
        // ENDP on TLS).
        let Some(cb) = self
            .fast_cb(mechanism)
            .filter(|_| self.fast_mechanisms().contains(&mechanism))
        else {
            return self.sasl_failure(SaslFailure::InvalidMechanism, None);
        };
        let Some(agent) = self.sasl2.as_ref().and_then(|s| s.agent.clone()) else {
            return self.sasl_failure(
                SaslFailure::MalformedRequest,
                Some("FAST needs a user-agent id"),
            );
        };
        let invalidate =
            fast_el.is_some_and(|f| matches!(f.attr("invalidate"), Some("true" | "1")));
        let count = match fast_el.and_then(|f| f.attr("count")) {
            None => None,
            Some(c) => match c.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return self.sasl_failure(
                        SaslFailure::MalformedRequest,
                        Some("count must be a positive integer"),
                    );
                }
            },
        };
        let data = match decode_sasl_payload(initial) {
            Ok(d) => d,
            Err(f) => return self.sasl_failure(f, None),
        };
        let Some(nul) = data.iter().position(|b| *b == 0) else {
            return self.sasl_failure(SaslFailure::MalformedRequest, None);
        };
        let authcid = String::from_utf8_lossy(&data[..nul]).to_string();
        let proof = data[nul + 1..].to_vec();
        self.last_auth_user = authcid.clone();
        let Some(node) = self.nodeprep(&authcid) else {
            return self.sasl_failure(SaslFailure::NotAuthorized, None);
        };
        let cx = self.core.cx(&host);
        let attempt = FastAttempt {
            user: node.clone(),
            agent,
            mechanism: mechanism.to_string(),
            proof,
            cb: cb.clone(),
            count,
            invalidate,
        };
        match fast.verify(cx, attempt).await {
            FastVerdict::Ok { token, rotate } => {
                if let Some(s2) = self.sasl2.as_mut() {
                    s2.fast = Some((mechanism.to_string(), rotate));
                    s2.invalidate = invalidate;
                }
                let answer = ht(&token, b"Responder", &cb);
                self.sasl_success(node, Some(answer))
            }
            FastVerdict::Expired => self.sasl_failure(
                SaslFailure::CredentialsExpired,
                Some("the token is no longer valid"),
            ),
            FastVerdict::Refused => self.sasl_failure(SaslFailure::NotAuthorized, None),
        }
    }

    /// Run `f` with the output captured; the frames it wrote.
    pub(super) async fn captured<F>(&mut self, f: F) -> Vec<String>
    where
        F: AsyncFnOnce(&mut Self),
    {
        let saved = std::mem::replace(&mut self.out, Output::new(Framing::Documents));
        f(self).await;
        let mut cap = std::mem::replace(&mut self.out, saved);
        cap.drain_frames()
            .filter_map(|f| match f {
                OutFrame::Element(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// The exchange succeeded: resume or bind inline, issue a token, and
    /// write `<success/>` (then what resumption sends again).
    async fn sasl2_success(&mut self) {
        let Some(s2) = self.sasl2.take() else { return };
        let (Some(user), Some(host)) = (self.user.clone(), self.host.clone()) else {
            return;
        };
        let mut inner = String::new();
        if let Some(Some(data)) = &s2.succeeded {
            inner.push_str("<additional-data>");
            inner.push_str(&encode_sasl_payload(data));
            inner.push_str("</additional-data>");
        }
        let mut after: Vec<String> = Vec::new();
        let mut extra = String::new();
        if let Some(resume) = &s2.resume {
            let resume = resume.clone();
            let mut frames = self
                .captured(async move |this: &mut Self| this.handle_resume(&resume).await)
                .await;
            if !frames.is_empty() {
                extra.push_str(&frames.remove(0));
            }
            after = frames;
        } else if let Some(bind) = &s2.bind {
            match Box::pin(self.bind2(&user, &host, bind)).await {
                Ok(bound) => extra.push_str(&bound),
                Err(cond) => {
                    // XEP-0386: a failed bind fails the authentication.
                    self.user = None;
                    self.out.element_with(|out, _| {
                        out.push_str("<failure xmlns='urn:xmpp:sasl:2'><aborted xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/><text>bind failed: ");
                        out.push_str(cond.name());
                        out.push_str("</text></failure>");
                    });
                    return;
                }
            }
        }
        let jid = match &self.bound {
            Some(b) => b.jid.to_string(),
            None => format!("{user}@{}", host.name),
        };
        // A token when asked for; else, after a FAST login with a token
        // due for rotation, one for the same mechanism (§3.5) unless the
        // client is invalidating its token (§3.6).
        let wanted = s2.request_token.clone().or_else(|| match &s2.fast {
            Some((mechanism, true)) if !s2.invalidate => Some(mechanism.clone()),
            _ => None,
        });
        if let Some(mechanism) = wanted
            && let (Some(fast), Some(agent)) = (host.regs.fast.clone(), s2.agent.clone())
            && let Some((token, expiry)) = fast
                .issue(self.core.cx(&host), user.clone(), agent, mechanism)
                .await
        {
            extra.push_str("<token xmlns='urn:xmpp:fast:0' expiry='");
            extra.push_str(&palaver_proto::datetime::format_datetime(expiry));
            extra.push_str("' token='");
            escape_into(&mut extra, &token);
            extra.push_str("'/>");
        }
        self.out.element_with(|out, _| {
            out.push_str("<success xmlns='urn:xmpp:sasl:2'>");
            out.push_str(&inner);
            out.push_str("<authorization-identifier>");
            escape_into(out, &jid);
            out.push_str("</authorization-identifier>");
            out.push_str(&extra);
            out.push_str("</success>");
        });
        for f in after {
            self.out.raw(&f);
        }
    }
}
