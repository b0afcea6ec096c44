//! XEP-0386 Bind 2: binding a resource inside a XEP-0388 authentication.
//!
//! The server picks the resource (the client's `<tag/>` and a random part,
//! so each login of an app is a new resource), binds it like RFC 6120
//! binding (`bind.rs`), then handles the client's inline requests: XEP-0198
//! `<enable/>` here (its `<enabled/>` goes into `<bound/>`), any other
//! namespace through the [`Bind2Inline`](crate::hooks::Bind2Inline) hook of
//! the module that advertised it (carbons).

use super::session::{C2sSession, random_id};
use crate::hooks::{Bind2Inline, Bind2Request};
use crate::host::Host;
use minidom::Element;
use palaver_proto::error::Condition;
use palaver_proto::writer::write_element;
use std::sync::Arc;

/// Namespace of XEP-0386.
pub const NS: &str = "urn:xmpp:bind:0";

impl C2sSession {
    /// Bind as `req` asks; the `<bound/>` element to put in `<success/>`.
    pub(super) async fn bind2(
        &mut self,
        user: &str,
        host: &Arc<Host>,
        req: &Element,
    ) -> Result<String, Condition> {
        let tag: String = req
            .get_child("tag", NS)
            .map(|t| t.text())
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control() && *c != '/')
            .take(64)
            .collect();
        let suffix = &random_id()[..8];
        let resource = if tag.trim().is_empty() {
            format!("palaver-{suffix}")
        } else {
            format!("{}.{suffix}", tag.trim())
        };
        let jid = self.bind_resource(user, host, &resource).await?;
        let mut bound = String::from("<bound xmlns='urn:xmpp:bind:0'>");
        let mut others = Vec::new();
        for c in req.children() {
            if c.is("tag", NS) {
                continue;
            }
            if c.is("enable", super::SM_NS) {
                let el = c.clone();
                let frames = self
                    .captured(async move |this: &mut Self| {
                        let _ = this.handle_stream_mgmt(el);
                    })
                    .await;
                for f in frames {
                    bound.push_str(&f);
                }
                continue;
            }
            others.push(c.clone());
        }
        if !others.is_empty() && host.hooks().has::<Bind2Inline>() {
            let mut arg = Bind2Request {
                requests: others,
                results: Vec::new(),
            };
            self.core
                .cx(host)
                .run_hook::<Bind2Inline>(Some(&jid), &mut arg);
            for r in &arg.results {
                write_element(&mut bound, r, "");
            }
        }
        bound.push_str("</bound>");
        Ok(bound)
    }
}
