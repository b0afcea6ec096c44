//! Resource binding (RFC 6120 §7): the IQs of an authenticated stream
//! before a resource is bound, and entering the session table.

use super::session::{Bound, C2sSession, Next, random_id};
use crate::sessions::SessionHandle;
use jid::FullJid;
use minidom::Element;
use palaver_proto::error::{Condition, StreamError, StreamErrorCondition as SC};
use palaver_proto::ns;
use palaver_proto::writer::escape_into;
use tokio::sync::mpsc;

impl C2sSession {
    /// An IQ after authentication, before binding: only `<bind/>` is allowed.
    pub(super) async fn handle_pre_bind_iq(&mut self, el: Element) -> Result<Next, StreamError> {
        let id = el.attr("id").map(str::to_string);
        let bind = el.get_child("bind", ns::BIND);
        if el.attr("type") != Some("set") || bind.is_none() {
            return Err(StreamError::with_text(
                SC::NotAuthorized,
                "bind a resource first",
            ));
        }
        let (Some(user), Some(host)) = (self.user.clone(), self.host.clone()) else {
            return Err(StreamError::new(SC::InternalServerError));
        };
        let requested = bind
            .and_then(|b| b.get_child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let resource = match requested {
            Some(r) => r,
            None => format!("palaver-{}", &random_id()[..10]),
        };
        let jid = match self.bind_resource(&user, &host, &resource).await {
            Ok(j) => j,
            Err(cond) => {
                self.iq_error_raw(id.as_deref(), cond);
                return Ok(Next::Continue);
            }
        };
        let mut inner = String::from("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>");
        escape_into(&mut inner, jid.as_str());
        inner.push_str("</jid></bind>");
        self.iq_reply_raw(id.as_deref(), "result", &inner);
        Ok(Next::Continue)
    }
}

impl C2sSession {
    /// Bind `resource` for `user` (RFC 6120 §7, also XEP-0386): enter the
    /// session table and run the session-bound hooks.
    pub(super) async fn bind_resource(
        &mut self,
        user: &str,
        host: &std::sync::Arc<crate::host::Host>,
        resource: &str,
    ) -> Result<FullJid, Condition> {
        let jid = FullJid::new(&format!("{user}@{}/{resource}", host.name))
            .map_err(|_| Condition::BadRequest)?;
        let (tx, rx) = mpsc::channel(crate::sessions::SESSION_QUEUE);
        let sid = self.core.registry.next_id();
        let max = max_user_sessions(&self.core.config(), &host.name, jid.to_bare().as_str());
        let handle = SessionHandle {
            id: sid,
            resource: jid.resource().as_str().to_string(),
            priority: None,
            presence: None,
            inactive_since: None,
            detached: false,
            conn: std::sync::Arc::new(self.connection(std::time::SystemTime::now())),
            tx,
        };
        if self.core.registry.bind(&jid, handle, max).is_err() {
            // RFC 6120 §7.6.2.1: the account is at its limit of resources.
            tracing::warn!(peer = %self.peer, jid = %jid.to_bare(), max, "max_user_sessions reached; bind refused");
            return Err(Condition::ResourceConstraint);
        }
        self.core.run_session_bound(&jid).await;
        tracing::debug!(peer = %self.peer, jid = %jid, "resource bound");
        self.bound = Some(Bound {
            jid: jid.clone(),
            id: sid,
            rx,
            priority: None,
            directed: Vec::new(),
        });
        Ok(jid)
    }
}

/// Sessions one account may have at once: ejabberd's `max_user_sessions`
/// shaper rule (a number or `infinity`), 10 when no rule says otherwise.
pub(crate) fn max_user_sessions(config: &crate::config::Config, host: &str, bare: &str) -> usize {
    const DEFAULT: usize = 10;
    match config.shaper_rule_value(Some(host), "max_user_sessions", bare) {
        None => DEFAULT,
        Some("infinity" | "unlimited") => usize::MAX,
        Some(v) => v.trim().parse::<usize>().unwrap_or(DEFAULT),
    }
}
