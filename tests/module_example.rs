//! The module of `docs/architecture.md` ("How to write a module"), run for
//! real: a service subdomain `echo.HOST` that receives messages, presence and
//! IQs through the routing table, an HTTP route, a hook holding the
//! stanza's acknowledgement ticket, a background task, and a clean stop.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The example module, whole (keep it under 100 lines: it is the documentation).
mod echo {
    use super::*;
    use minidom::Element;
    use palaver_proto::error::Condition;
    use palaver_proto::ns::CLIENT;
    use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
    use palaver_server::{HookAction, HostSetup, Module, ModuleCx, hooks::UserSent};

    /// What the test observes (a real module keeps its state in `Self`).
    pub static ECHOED: AtomicUsize = AtomicUsize::new(0);
    pub static SENT_TO_ECHO: AtomicUsize = AtomicUsize::new(0);
    pub static STOPPED: AtomicBool = AtomicBool::new(false);
    pub static TASK_ENDED: AtomicBool = AtomicBool::new(false);

    /// `mod_echo`: `echo.HOST` answers every stanza in kind.
    pub struct Echo;

    /// Options: `prefix` goes before every echoed body.
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    pub struct Options {
        prefix: String,
    }

    impl Module for Echo {
        const NAME: &'static str = "mod_echo";
        type Options = Options;

        fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
            let domain = format!("echo.{}", host.host());
            // Every stanza for echo.HOST or any JID at it (IQ handlers by
            // namespace are `on_service_iq`).
            host.on_service_stanza(&domain, move |cx, st| answer(cx, st, &o.prefix));
            // An asynchronous hook holds the client's <a/> until it finishes.
            host.hook_async::<UserSent, _>(10, move |_cx, sent| {
                let st = &sent.stanza;
                let ours = st.kind == StanzaKind::Message
                    && st
                        .to
                        .as_ref()
                        .is_some_and(|t| t.domain().as_str() == domain);
                async move {
                    SENT_TO_ECHO.fetch_add(ours as usize, Ordering::SeqCst);
                    HookAction::Continue
                }
            });
            host.http_route("/echo/count", |_cx| {
                axum::routing::get(|| async { ECHOED.load(Ordering::SeqCst).to_string() })
            });
            // A background task, cancelled when the module stops.
            host.spawn_task(|_cx| async {
                let _ended = OnDrop(|| TASK_ENDED.store(true, Ordering::SeqCst));
                std::future::pending::<()>().await
            });
            Ok(Echo)
        }

        fn stop(&self, _cx: &ModuleCx) {
            STOPPED.store(true, Ordering::SeqCst);
        }
    }

    /// Messages come back with the prefix, subscriptions are approved, probes
    /// and available presence answered, IQ requests refused.
    fn answer(cx: &ModuleCx, st: Stanza, prefix: &str) {
        let Some(me) = st.to.clone() else { return };
        let mut el = Element::bare(st.el().name(), CLIENT);
        match (st.kind, st.type_attr()) {
            (_, Some("error")) => return,
            (StanzaKind::Message, _) => {
                ECHOED.fetch_add(1, Ordering::SeqCst);
                let body = st.el().get_child("body", CLIENT).map(|b| b.text());
                let text = format!("{prefix}{}", body.unwrap_or_default());
                el.append_child(Element::builder("body", CLIENT).append(text).build());
            }
            (StanzaKind::Presence, Some("subscribe")) => set_attr(&mut el, "type", "subscribed"),
            (StanzaKind::Presence, None | Some("probe")) => {}
            (StanzaKind::Iq, Some("get" | "set")) => {
                return cx.bounce(&st, Condition::FeatureNotImplemented, None);
            }
            _ => return,
        }
        cx.route(Stanza::new(st.kind, me, Some(st.from.clone()), el));
    }

    struct OnDrop<F: FnMut()>(F);
    impl<F: FnMut()> Drop for OnDrop<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
}

#[tokio::test]
async fn a_module_serves_a_subdomain_an_http_route_a_hook_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "hosts: [{DOMAIN}]\nloglevel: warning\ndata_dir: {}\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    allow_plain_without_tls: true\n  - port: 0\n    ip: 127.0.0.1\n    module: http\nmodules:\n  mod_disco: {{}}\n  mod_stream_mgmt: {{}}\n  mod_echo:\n    prefix: \"echo: \"\n",
        dir.path().display()
    );
    let config = palaver_server::Config::parse(&text).expect("config");
    let mut registry = palaver_modules::registry();
    registry.push(palaver_server::ModuleDef::of::<echo::Echo>());
    let mut server = palaver_server::Server::start(config, &registry)
        .await
        .expect("start");
    palaver_http::start(&mut server);
    let (addr, http) = (
        server.c2s_addr().expect("c2s"),
        server.http_addr().expect("http"),
    );
    let creds = palaver_server::auth::derive_all("pw", 4096);
    let accounts = &server.core.storage().accounts;
    accounts
        .create_account(DOMAIN, "alice", &creds)
        .await
        .expect("user");

    let mut c = raw_login(addr, "alice", DOMAIN, "pw", "r").await;
    c.send("<presence/>").await;
    c.until("/>").await; // our own presence, back to us
    // The host's disco#items lists the service.
    c.send("<iq type='get' id='i1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(c.until("</iq>").await.contains("jid='echo.localhost'"));
    // Presence: subscription answered, probe answered with availability.
    c.send("<presence to='echo.localhost' type='subscribe'/>")
        .await;
    let p = c.until("/>").await;
    assert!(
        p.contains("type='subscribed'") && p.contains("from='echo.localhost'"),
        "{p}"
    );
    c.send("<presence to='echo.localhost' type='probe'/>").await;
    let p = c.until("/>").await;
    assert!(
        p.contains("<presence") && p.contains("from='echo.localhost'") && !p.contains("type="),
        "{p}"
    );
    // IQs without a handler get the service's own error.
    c.send("<iq type='get' id='i3' to='echo.localhost'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    assert!(c.until("</iq>").await.contains("feature-not-implemented"));
    // A message to any JID at the service comes back, through the router.
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    c.until("<enabled").await;
    c.send("<message to='bot@echo.localhost/x' id='m1'><body>hi</body></message><r xmlns='urn:xmpp:sm:3'/>").await;
    let got = c.until("</message>").await;
    assert!(
        got.contains("from='bot@echo.localhost/x'") && got.contains("echo: hi"),
        "{got}"
    );
    // The UserSent hook ran before the stanza was acknowledged.
    c.until("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    assert_eq!(echo::SENT_TO_ECHO.load(Ordering::SeqCst), 1);
    // The HTTP route.
    let mut h = tokio::net::TcpStream::connect(http).await.expect("http");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    h.write_all(b"GET /echo/count HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut resp = String::new();
    h.read_to_string(&mut resp).await.expect("read");
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("\r\n\r\n1"),
        "{resp}"
    );
    // Stop: the module's stop runs and its task is cancelled.
    assert!(!echo::STOPPED.load(Ordering::SeqCst) && !echo::TASK_ENDED.load(Ordering::SeqCst));
    server.shutdown().await;
    assert!(echo::STOPPED.load(Ordering::SeqCst), "stop was not called");
    for _ in 0..100 {
        if echo::TASK_ENDED.load(Ordering::SeqCst) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the module's task was not cancelled");
}
