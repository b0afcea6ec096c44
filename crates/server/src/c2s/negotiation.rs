//! Stream negotiation (RFC 6120 §4–5): the stream header, the features
//! offered at each stage, STARTTLS, and the IQs modules answer before
//! authentication (in-band registration).

use super::session::{C2sSession, Next, random_id};
use minidom::Element;
use palaver_proto::error::{StreamError, StreamErrorCondition as SC};
use palaver_proto::framer::StreamHeader;
use palaver_proto::ns;
use palaver_proto::sasl::Mechanism;
use palaver_proto::writer::write_element;

impl C2sSession {
    /// Write our stream header, once per stream.
    pub(super) fn write_header(&mut self) {
        if self.header_sent {
            return;
        }
        self.header_sent = true;
        if self.stream_id.is_empty() {
            self.stream_id = random_id();
        }
        let from = self
            .host
            .as_ref()
            .map(|h| h.name.clone())
            .or_else(|| self.core.config().hosts.first().cloned())
            .unwrap_or_default();
        self.out.open(&self.stream_id, &from);
    }

    /// Handle a stream header.
    pub fn handle_open(&mut self, h: &StreamHeader) -> Result<(), StreamError> {
        self.header_sent = false;
        self.header_due = None;
        self.stream_id = random_id();
        if !h.is_stream || h.default_ns.as_deref() != Some(ns::CLIENT) {
            return Err(StreamError::with_text(
                SC::InvalidNamespace,
                "expected a jabber:client stream",
            ));
        }
        let host = match &h.to {
            Some(to) => {
                let domain = jid::BareJid::new(to)
                    .ok()
                    .filter(|j| j.node().is_none())
                    .map(|j| j.domain().to_string());
                domain.and_then(|d| self.core.host(&d))
            }
            None => {
                let hosts = self.core.host_map();
                match hosts.len() {
                    1 => hosts.values().next().cloned(),
                    _ => None,
                }
            }
        };
        let Some(host) = host else {
            return Err(StreamError::with_text(
                SC::HostUnknown,
                "this server does not serve that domain",
            ));
        };
        if let Some(old) = &self.host
            && old.name != host.name
        {
            return Err(StreamError::new(SC::HostUnknown));
        }
        if host.hooks().has::<crate::hooks::StreamOpened>() {
            let mut open = crate::hooks::StreamOpen {
                ip: self.peer.ip(),
                refuse: None,
            };
            self.core
                .cx(&host)
                .run_hook::<crate::hooks::StreamOpened>(None, &mut open);
            if let Some(reason) = open.refuse {
                self.host = Some(host);
                return Err(StreamError::with_text(SC::PolicyViolation, reason));
            }
        }
        self.host = Some(host);
        match h.version.as_deref() {
            Some(v) if v.split('.').next().and_then(|m| m.parse::<u32>().ok()) == Some(1) => {}
            _ => {
                return Err(StreamError::with_text(
                    SC::UnsupportedVersion,
                    "XMPP 1.0 is required",
                ));
            }
        }
        self.write_header();
        self.write_features();
        Ok(())
    }

    pub(super) fn tls_possible(&self) -> bool {
        !self.secure && self.cfg.starttls && !self.cfg.tls && self.user.is_none()
    }

    pub(super) fn plain_allowed(&self) -> bool {
        self.secure || self.cfg.allow_plain_without_tls
    }

    fn write_features(&mut self) {
        // The default namespace in scope inside <stream:features/>.
        let scope = self.out.scope();
        let mut s = String::with_capacity(512);
        if self.user.is_none() {
            if self.tls_possible() {
                s.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if self.cfg.starttls_required {
                    s.push_str("<required/>");
                }
                s.push_str("</starttls>");
            }
            if !(self.tls_possible() && self.cfg.starttls_required) {
                let mut mechs = String::new();
                for m in Mechanism::ALL {
                    if self.offers(m) {
                        mechs.push_str("<mechanism>");
                        mechs.push_str(m.name());
                        mechs.push_str("</mechanism>");
                    }
                }
                s.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                s.push_str(&mechs);
                s.push_str("</mechanisms>");
                // XEP-0388, with the same mechanisms (`sasl2.rs`).
                self.sasl2_feature(&mut s, &mechs);
                if !self.cb.is_empty() {
                    s.push_str("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>");
                    for t in self.cb.supported() {
                        s.push_str("<channel-binding type='");
                        s.push_str(t.name());
                        s.push_str("'/>");
                    }
                    s.push_str("</sasl-channel-binding>");
                }
                if let Some(host) = self.host.clone() {
                    for f in &host.regs.pre_auth_features {
                        for el in f(&host) {
                            write_element(&mut s, &el, scope);
                        }
                    }
                }
            }
        } else {
            s.push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
            s.push_str(
                "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>",
            );
            if self.stream_mgmt_config().is_some() {
                s.push_str("<sm xmlns='urn:xmpp:sm:3'/>");
            }
            if let Some(host) = self.host.clone() {
                for f in &host.regs.stream_features {
                    for el in f(&host) {
                        write_element(&mut s, &el, scope);
                    }
                }
            }
        }
        self.out
            .stream_element("features", |out, _| out.push_str(&s));
    }

    pub(super) fn offers(&self, m: Mechanism) -> bool {
        if self.mechanism_disabled(m.name()) {
            return false;
        }
        // What the host's auth backend can check (auth_method).
        let host = self.host.as_ref().map(|h| h.name.as_str()).unwrap_or("");
        let auth = &self.core.auth;
        match m {
            Mechanism::Plain => self.plain_allowed() && auth.passwords(host),
            Mechanism::Anonymous => auth.anonymous_allowed(host),
            Mechanism::Scram { plus, hash } => {
                (!plus || !self.cb.is_empty()) && auth.scram_offered(host, hash)
            }
        }
    }

    /// Whether the operator disabled the mechanism `name`
    /// (`disable_sasl_mechanisms`, names kept in upper case).
    pub(super) fn mechanism_disabled(&self, name: &str) -> bool {
        let cfg = self.core.config();
        cfg.disable_sasl_mechanisms.iter().any(|d| d == name)
    }

    /// `<starttls/>` (RFC 6120 §5.4.2).
    pub(super) fn handle_starttls(&mut self) -> Next {
        if !self.tls_possible() {
            self.out
                .raw("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            self.out.close();
            self.closing = true;
            return Next::Close;
        }
        self.out
            .raw("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        Next::StartTls
    }

    /// An IQ before authentication: answered by the module that registered
    /// its namespace (in-band registration), or the stream ends.
    pub(super) async fn handle_pre_auth_iq(&mut self, el: Element) -> Result<Next, StreamError> {
        let Some(host) = self.host.clone() else {
            return Err(StreamError::new(SC::InternalServerError));
        };
        let id = el.attr("id").map(str::to_string);
        let ns_of = el.children().next().map(|c| c.ns());
        let hook = ns_of
            .as_ref()
            .and_then(|n| host.regs.pre_auth_iq.get(n))
            .cloned();
        let Some(hook) = hook else {
            return Err(StreamError::with_text(
                SC::NotAuthorized,
                "authenticate first",
            ));
        };
        if !matches!(el.attr("type"), Some("get") | Some("set")) {
            return Ok(Next::Continue);
        }
        let res = hook(crate::module::PreAuthIq {
            core: self.core.clone(),
            host,
            el,
            peer: self.peer,
            secure: self.secure,
        })
        .await;
        match res {
            Ok(payload) => {
                let mut inner = String::new();
                if let Some(p) = payload {
                    write_element(&mut inner, &p, ns::CLIENT);
                }
                self.iq_reply_raw(id.as_deref(), "result", &inner);
            }
            Err(e) => {
                let mut s = String::new();
                write_element(&mut s, &e.to_element(ns::CLIENT), ns::CLIENT);
                self.iq_reply_raw(id.as_deref(), "error", &s);
            }
        }
        Ok(Next::Continue)
    }
}
