//! RFC 6121 Appendix A, table by table: every subscription state and every
//! subscription stanza, between two real clients.
//!
//! - Outbound (A.2, with the contact's side per A.3): the two clients are
//!   driven to a state by the usual handshakes, the user sends the stanza,
//!   and both rosters, the delivery to the contact and the roster pushes are
//!   checked.
//! - Inbound (A.3): the contact's roster is set to each state (the server
//!   cannot reach states where the two rosters disagree by handshakes
//!   alone), the user is set to a state from which the stanza is routed, and
//!   the contact's new state and what its client receives are checked.
mod common;
#[path = "common/xclient.rs"]
mod xclient;
use common::*;
use futures::StreamExt;
use minidom::Element;
use palaver_storage::im::{RosterItem, Subscription};
use std::sync::Arc;
use xclient::*;

const MODULES: &str =
    "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_offline: {}\n";

/// Subscription, pending out (`ask`), pending in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    sub: Subscription,
    out: bool,
    inb: bool,
}

const fn st(sub: Subscription, out: bool, inb: bool) -> State {
    State { sub, out, inb }
}

use Subscription::{Both, From, None as No, To};

const NONE: State = st(No, false, false);
const NONE_OUT: State = st(No, true, false);
const NONE_IN: State = st(No, false, true);
const NONE_OUT_IN: State = st(No, true, true);
const TO: State = st(To, false, false);
const TO_IN: State = st(To, false, true);
const FROM: State = st(From, false, false);
const FROM_OUT: State = st(From, true, false);
const BOTH: State = st(Both, false, false);

/// The nine states of Appendix A.1.
const STATES: [State; 9] = [
    NONE,
    NONE_OUT,
    NONE_IN,
    NONE_OUT_IN,
    TO,
    TO_IN,
    FROM,
    FROM_OUT,
    BOTH,
];

const KINDS: [&str; 4] = ["subscribe", "unsubscribe", "subscribed", "unsubscribed"];

fn name(s: State) -> &'static str {
    match s {
        NONE => "None",
        NONE_OUT => "None + Pending Out",
        NONE_IN => "None + Pending In",
        NONE_OUT_IN => "None + Pending Out/In",
        TO => "To",
        TO_IN => "To + Pending In",
        FROM => "From",
        FROM_OUT => "From + Pending Out",
        BOTH => "Both",
        _ => "impossible",
    }
}

/// The same relationship seen from the contact's side.
fn mirror(s: State) -> State {
    let sub = match s.sub {
        To => From,
        From => To,
        other => other,
    };
    st(sub, s.inb, s.out)
}

/// Appendix A.2: the user sends `kind`; (route?, new state).
fn outbound(kind: &str, s: State) -> (bool, State) {
    match kind {
        // A.2.1: always routed; a pending out is added unless subscribed.
        "subscribe" => match s {
            NONE => (true, NONE_OUT),
            NONE_IN => (true, NONE_OUT_IN),
            FROM => (true, FROM_OUT),
            other => (true, other),
        },
        // A.2.2: always routed; "to" and pending out are cancelled.
        "unsubscribe" => match s {
            NONE_OUT => (true, NONE),
            NONE_OUT_IN => (true, NONE_IN),
            TO => (true, NONE),
            TO_IN => (true, NONE_IN),
            FROM_OUT => (true, FROM),
            BOTH => (true, FROM),
            other => (true, other),
        },
        // A.2.3: approves a pending request only.
        "subscribed" => match s {
            NONE_IN => (true, FROM),
            NONE_OUT_IN => (true, FROM_OUT),
            TO_IN => (true, BOTH),
            other => (false, other),
        },
        // A.2.4: denies a pending request or cancels "from".
        "unsubscribed" => match s {
            NONE_IN => (true, NONE),
            NONE_OUT_IN => (true, NONE_OUT),
            TO_IN => (true, TO),
            FROM => (true, NONE),
            FROM_OUT => (true, NONE_OUT),
            BOTH => (true, TO),
            other => (false, other),
        },
        _ => unreachable!(),
    }
}

/// Appendix A.3: `kind` arrives for the contact in state `s`; (deliver?,
/// new state, the server answers `subscribed` on the contact's behalf).
fn inbound(kind: &str, s: State) -> (bool, State, bool) {
    match kind {
        // A.3.1 (* = already subscribed: answered by the server).
        "subscribe" => match s {
            NONE => (true, NONE_IN, false),
            NONE_OUT => (true, NONE_OUT_IN, false),
            TO => (true, TO_IN, false),
            FROM | FROM_OUT | BOTH => (false, s, true),
            other => (false, other, false),
        },
        // A.3.2
        "unsubscribe" => match s {
            NONE_IN => (true, NONE, false),
            NONE_OUT_IN => (true, NONE_OUT, false),
            TO_IN => (true, TO, false),
            FROM => (true, NONE, false),
            FROM_OUT => (true, NONE_OUT, false),
            BOTH => (true, TO, false),
            other => (false, other, false),
        },
        // A.3.3
        "subscribed" => match s {
            NONE_OUT => (true, TO, false),
            NONE_OUT_IN => (true, TO_IN, false),
            FROM_OUT => (true, BOTH, false),
            other => (false, other, false),
        },
        // A.3.4
        "unsubscribed" => match s {
            NONE_OUT => (true, NONE, false),
            NONE_OUT_IN => (true, NONE_IN, false),
            TO => (true, NONE, false),
            TO_IN => (true, NONE_IN, false),
            FROM_OUT => (true, FROM, false),
            BOTH => (true, FROM, false),
            other => (false, other, false),
        },
        _ => unreachable!(),
    }
}

/// `user`'s stored state towards `contact` (bare JIDs on localhost).
async fn state_of(srv: &TestServer, user: &str, contact: &str) -> State {
    let roster = &srv.core().storage().roster;
    let item = roster
        .roster_item(DOMAIN, user, contact)
        .await
        .expect("roster item");
    let inb = roster
        .pending_in(DOMAIN, user)
        .await
        .expect("pending in")
        .iter()
        .any(|(j, _)| j == contact);
    st(
        item.as_ref().map_or(No, |i| i.subscription),
        item.is_some_and(|i| i.ask),
        inb,
    )
}

/// Store `s` as `user`'s state towards `contact`.
async fn seed(srv: &TestServer, user: &str, contact: &str, s: State) {
    let roster = &srv.core().storage().roster;
    if s != NONE {
        let mut it = RosterItem::new(contact);
        it.subscription = s.sub;
        it.ask = s.out;
        roster
            .put_roster_item(DOMAIN, user, &it)
            .await
            .expect("seed item");
    }
    if s.inb {
        roster
            .add_pending_in(
                DOMAIN,
                user,
                contact,
                &format!("<presence xmlns='jabber:client' from='{contact}' to='{user}@{DOMAIN}' type='subscribe'/>"),
            )
            .await
            .expect("seed pending");
    }
}

fn is_sub(from: &str, kind: &'static str) -> impl Fn(&Element) -> bool + use<> {
    let from = from.to_string();
    move |e: &Element| {
        e.name() == "presence" && e.attr("type") == Some(kind) && e.attr("from") == Some(&from)
    }
}

/// A roster push for `jid` showing state `s` (subscription and ask).
fn is_push(jid: &str, s: State) -> impl Fn(&Element) -> bool + use<> {
    let jid = jid.to_string();
    let sub = match s.sub {
        No => "none",
        To => "to",
        From => "from",
        Both => "both",
    };
    move |e: &Element| {
        e.name() == "iq"
            && e.attr("type") == Some("set")
            && e.get_child("query", ROSTER)
                .and_then(|q| q.get_child("item", ROSTER))
                .is_some_and(|i| {
                    i.attr("jid") == Some(jid.as_str())
                        && i.attr("subscription") == Some(sub)
                        && (i.attr("ask") == Some("subscribe")) == s.out
                })
    }
}

/// Every roster push about `jid` still queued at `c` shows `want` (a push
/// only ever reports the state the row ends in).
fn no_other_push(c: &Client, jid: &str, want: State, row: &str) {
    let any_push = |e: &Element| {
        e.name() == "iq"
            && e.attr("type") == Some("set")
            && e.get_child("query", ROSTER)
                .and_then(|q| q.get_child("item", ROSTER))
                .is_some_and(|i| i.attr("jid") == Some(jid))
    };
    let right = is_push(jid, want);
    for e in c.queue.iter().filter(|e| any_push(e)) {
        assert!(
            right(e),
            "{row}: {} got a push for another state than {}: {}",
            c.jid,
            name(want),
            xml(e)
        );
    }
}

/// Wait (one round trip of `c` at a time) until `user`'s state is `want`.
async fn await_state(
    srv: &TestServer,
    c: &mut Client,
    user: &str,
    contact: &str,
    want: State,
    row: &str,
) {
    for _ in 0..50 {
        if state_of(srv, user, contact).await == want {
            return;
        }
        c.drain_keep().await;
    }
    panic!(
        "{row}: {user} ends in {:?}, expected {} ({want:?})",
        state_of(srv, user, contact).await,
        name(want)
    );
}

impl Client {
    /// A ping round trip that keeps what arrived queued.
    async fn drain_keep(&mut self) {
        let got = self.drain().await;
        self.queue.extend(got);
    }
}

/// Two available clients, `u` and `c` (interested in roster pushes).
async fn pair(srv: &TestServer, u: &str, c: &str) -> (Client, Client) {
    let mut a = Client::login(srv, u, DOMAIN, "r").await;
    let mut b = Client::login(srv, c, DOMAIN, "r").await;
    for x in [&mut a, &mut b] {
        x.roster(None).await;
        x.send("<presence/>").await;
    }
    (a, b)
}

/// `from` sends `kind` to `to`, which receives it.
async fn send_wait(from: &mut Client, to: &mut Client, kind: &'static str) {
    let (fj, tj) = (bare(&from.jid), bare(&to.jid));
    from.send(&format!("<presence to='{tj}' type='{kind}'/>"))
        .await;
    to.expect(&format!("{kind} from {fj}"), is_sub(&fj, kind))
        .await;
}

/// `a` subscribes to `b`, who approves.
async fn subscribe_to(a: &mut Client, b: &mut Client) {
    send_wait(a, b, "subscribe").await;
    send_wait(b, a, "subscribed").await;
}

/// Drive `a` (user) and `b` (contact) to `s` with ordinary stanzas.
async fn drive(a: &mut Client, b: &mut Client, s: State) {
    match s {
        NONE => {}
        NONE_OUT => send_wait(a, b, "subscribe").await,
        NONE_IN => send_wait(b, a, "subscribe").await,
        NONE_OUT_IN => {
            send_wait(a, b, "subscribe").await;
            send_wait(b, a, "subscribe").await;
        }
        TO => subscribe_to(a, b).await,
        TO_IN => {
            subscribe_to(a, b).await;
            send_wait(b, a, "subscribe").await;
        }
        FROM => subscribe_to(b, a).await,
        FROM_OUT => {
            subscribe_to(b, a).await;
            send_wait(a, b, "subscribe").await;
        }
        BOTH => {
            subscribe_to(a, b).await;
            subscribe_to(b, a).await;
        }
        _ => unreachable!(),
    }
}

fn bare(jid: &str) -> String {
    jid.split('/').next().unwrap_or(jid).to_string()
}

/// SCRAM credentials for "pw", derived once: deriving them for each of
/// the 144 accounts would take most of the test's time.
fn creds() -> &'static [palaver_proto::sasl::ScramCredentials] {
    static CREDS: std::sync::OnceLock<Vec<palaver_proto::sasl::ScramCredentials>> =
        std::sync::OnceLock::new();
    CREDS.get_or_init(|| palaver_server::auth::derive_all("pw", 4096))
}

async fn add_user(srv: &TestServer, user: &str) {
    srv.core()
        .storage()
        .accounts
        .create_account(DOMAIN, user, creds())
        .await
        .expect("create user");
}

async fn server() -> Arc<TestServer> {
    Arc::new(TestServer::start_with("", MODULES).await)
}

/// A.2 (and A.3 on the contact's side) for every state reachable by
/// handshakes, both rosters consistent.
#[tokio::test]
async fn appendix_a_outbound_table() {
    let srv = server().await;
    let mut rows = Vec::new();
    for (i, s) in STATES.iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            rows.push((format!("ou{i}k{k}"), format!("oc{i}k{k}"), *s, *kind));
        }
    }
    for (u, c, _, _) in &rows {
        add_user(&srv, u).await;
        add_user(&srv, c).await;
    }
    futures::stream::iter(rows)
        .for_each_concurrent(6, |(u, c, s, kind)| {
            let srv = srv.clone();
            async move {
                let (uj, cj) = (format!("{u}@{DOMAIN}"), format!("{c}@{DOMAIN}"));
                let row = format!("outbound {kind} in {}", name(s));
                let (mut a, mut b) = pair(&srv, &u, &c).await;
                a.drain().await;
                b.drain().await;
                drive(&mut a, &mut b, s).await;
                await_state(&srv, &mut a, &u, &cj, s, &format!("{row} (driving)")).await;
                await_state(
                    &srv,
                    &mut b,
                    &c,
                    &uj,
                    mirror(s),
                    &format!("{row} (driving)"),
                )
                .await;
                // The last push of the driving shows the driven state: what
                // arrives after it belongs to the row.
                for (x, jid, want) in [(&mut a, &cj, s), (&mut b, &uj, mirror(s))] {
                    if (want.sub, want.out) != (No, false) {
                        x.expect(&format!("{row}: push of the driving"), is_push(jid, want))
                            .await;
                    }
                    x.queue.clear();
                }

                a.send(&format!("<presence to='{cj}' type='{kind}'/>"))
                    .await;
                let (routed, a_new) = outbound(kind, s);
                let (delivered, b_new, answered) = if routed {
                    inbound(kind, mirror(s))
                } else {
                    (false, mirror(s), false)
                };
                // The server's `subscribed` on b's behalf reaches a (A.3.3).
                let a_final = if answered {
                    inbound("subscribed", a_new).1
                } else {
                    a_new
                };
                await_state(&srv, &mut a, &u, &cj, a_final, &row).await;
                await_state(&srv, &mut b, &c, &uj, b_new, &row).await;
                if delivered {
                    b.expect(&format!("{row}: delivered"), is_sub(&uj, kind))
                        .await;
                }
                if (a_new.sub, a_new.out) != (s.sub, s.out) {
                    a.expect(&format!("{row}: push to the user"), is_push(&cj, a_new))
                        .await;
                }
                if (b_new.sub, b_new.out) != (mirror(s).sub, mirror(s).out) {
                    b.expect(&format!("{row}: push to the contact"), is_push(&uj, b_new))
                        .await;
                }
                // A marker after the stanza: whatever b was to get came first.
                a.send(&format!(
                    "<message to='{cj}/r' type='chat'><body>marker</body></message>"
                ))
                .await;
                b.expect(&format!("{row}: marker"), |e| {
                    e.name() == "message" && e.attr("type") == Some("chat")
                })
                .await;
                if !delivered {
                    assert!(
                        !b.queue.iter().any(is_sub(&uj, kind)),
                        "{row}: delivered, expected not: {:?}",
                        b.queue.iter().map(xml).collect::<Vec<_>>()
                    );
                }
                a.drain_keep().await;
                no_other_push(&a, &cj, a_final, &row);
                no_other_push(&b, &uj, b_new, &row);
                // The server's answer on b's behalf is delivered to a only
                // if a's state asks for it (A.3.3).
                if answered && inbound("subscribed", a_new).0 {
                    a.expect(
                        &format!("{row}: subscribed on the contact's behalf"),
                        is_sub(&cj, "subscribed"),
                    )
                    .await;
                }
            }
        })
        .await;
    if let Ok(srv) = Arc::try_unwrap(srv) {
        srv.stop().await;
    }
}

/// A.3 for every state of the receiving contact; the sender is set to a
/// state from which the stanza is routed (A.2).
#[tokio::test]
async fn appendix_a_inbound_table() {
    let srv = server().await;
    let mut rows = Vec::new();
    for (i, s) in STATES.iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            rows.push((format!("iu{i}k{k}"), format!("ic{i}k{k}"), *s, *kind));
        }
    }
    for (u, c, s, kind) in &rows {
        add_user(&srv, u).await;
        add_user(&srv, c).await;
        // The sender's state routes `kind` (A.2): a pending request to
        // answer for subscribed/unsubscribed, anything for the others.
        let sender = match *kind {
            "subscribed" | "unsubscribed" => NONE_IN,
            _ => NONE,
        };
        assert!(outbound(kind, sender).0);
        seed(&srv, u, &format!("{c}@{DOMAIN}"), sender).await;
        seed(&srv, c, &format!("{u}@{DOMAIN}"), *s).await;
    }
    futures::stream::iter(rows)
        .for_each_concurrent(6, |(u, c, s, kind)| {
            let srv = srv.clone();
            async move {
                let (uj, cj) = (format!("{u}@{DOMAIN}"), format!("{c}@{DOMAIN}"));
                let row = format!("inbound {kind} in {}", name(s));
                let (mut a, mut b) = pair(&srv, &u, &c).await;
                // A pending request is redelivered at login (RFC 6121
                // §3.1.3): take it before the row's stanza.
                if s.inb {
                    b.expect(
                        &format!("{row}: request redelivered"),
                        is_sub(&uj, "subscribe"),
                    )
                    .await;
                }
                a.drain().await;
                b.drain().await;
                a.send(&format!("<presence to='{cj}' type='{kind}'/>"))
                    .await;
                let (delivered, b_new, answered) = inbound(kind, s);
                await_state(&srv, &mut b, &c, &uj, b_new, &row).await;
                if delivered {
                    b.expect(&format!("{row}: delivered"), is_sub(&uj, kind))
                        .await;
                }
                if (b_new.sub, b_new.out) != (s.sub, s.out) {
                    b.expect(&format!("{row}: push"), is_push(&uj, b_new)).await;
                }
                if answered {
                    a.expect(
                        &format!("{row}: subscribed on the contact's behalf"),
                        is_sub(&cj, "subscribed"),
                    )
                    .await;
                }
                a.send(&format!(
                    "<message to='{cj}/r' type='chat'><body>marker</body></message>"
                ))
                .await;
                b.expect(&format!("{row}: marker"), |e| {
                    e.name() == "message" && e.attr("type") == Some("chat")
                })
                .await;
                if !delivered {
                    assert!(
                        !b.queue.iter().any(is_sub(&uj, kind)),
                        "{row}: delivered, expected not: {:?}",
                        b.queue.iter().map(xml).collect::<Vec<_>>()
                    );
                }
                no_other_push(&b, &uj, b_new, &row);
            }
        })
        .await;
    if let Ok(srv) = Arc::try_unwrap(srv) {
        srv.stop().await;
    }
}
