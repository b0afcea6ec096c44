//! XEP-0045 Multi-User Chat (mod_muc) over real sockets: a reserved room
//! configured by its owner, occupants over TCP and WebSocket, history,
//! moderation, members-only and other refusals, and a persistent room that
//! survives a restart.
mod common;
use base64::Engine;
use common::*;
use futures::{SinkExt, StreamExt};
use palaver_proto::sasl::{ScramClient, ScramHash};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_muc:\n    history_size: 5\n    max_users: 50\n    max_user_conferences: 3\n    access_create: creators\nacl:\n  creators:\n    user: [alice, owner2]\naccess_rules:\n  creators:\n    allow: creators\n";
const ROOM: &str = "room@conference.localhost";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client over TCP or WebSocket, read the same way.
enum Conn {
    Tcp(RawTcp),
    Ws(Box<Ws>, String),
}

impl Conn {
    async fn send(&mut self, s: &str) {
        match self {
            Conn::Tcp(c) => c.send(s).await,
            Conn::Ws(ws, _) => ws
                .send(Message::Text(s.to_string().into()))
                .await
                .expect("ws send"),
        }
    }

    async fn until(&mut self, needle: &str) -> String {
        match self {
            Conn::Tcp(c) => c.until(needle).await,
            Conn::Ws(ws, buf) => {
                let r = tokio::time::timeout(TIMEOUT, async {
                    loop {
                        if let Some(pos) = buf.find(needle) {
                            let end = pos + needle.len();
                            let out = buf[..end].to_string();
                            buf.drain(..end);
                            return out;
                        }
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) => buf.push_str(&t),
                            Some(Ok(_)) => {}
                            other => panic!("websocket ended: {other:?}; had {buf:?}"),
                        }
                    }
                })
                .await;
                match r {
                    Ok(s) => s,
                    Err(_) => panic!("timed out waiting for {needle:?}; got {buf:?}"),
                }
            }
        }
    }

    /// The next complete stanza containing `needle` (reads whole stanzas).
    async fn stanza_with(&mut self, needle: &str) -> String {
        loop {
            let s = self.next_stanza().await;
            if s.contains(needle) {
                return s;
            }
        }
    }

    /// The next complete stanza containing every needle.
    async fn stanza_all(&mut self, needles: &[&str]) -> String {
        loop {
            let s = self.next_stanza().await;
            if needles.iter().all(|n| s.contains(n)) {
                return s;
            }
        }
    }

    /// One top-level stanza (message, presence or iq).
    async fn next_stanza(&mut self) -> String {
        let head = self.until("<").await;
        let _ = head;
        let rest = self.until(">").await;
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == ':')
            .collect();
        let mut s = format!("<{rest}");
        if rest.ends_with("/>") {
            return s;
        }
        // Nested elements of the same name (a forwarded message) close first.
        let close = format!("</{name}>");
        loop {
            s.push_str(&self.until(&close).await);
            let opens =
                s.matches(&format!("<{name} ")).count() + s.matches(&format!("<{name}>")).count();
            if s.matches(&close).count() >= opens {
                return s;
            }
        }
    }
}

async fn tcp(srv: &TestServer, user: &str, res: &str) -> Conn {
    let mut c = raw_login(srv.addr, user, DOMAIN, "pw", res).await;
    c.send("<presence/>").await;
    c.until("/>").await;
    Conn::Tcp(c)
}

async fn ws(srv: &TestServer, user: &str) -> Conn {
    let mut req = format!("ws://{}/ws", srv.http_addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "xmpp".parse().expect("header"));
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    let mut c = Conn::Ws(Box::new(ws), String::new());
    let open = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";
    c.send(open).await;
    c.until("</stream:features>").await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut scram = ScramClient::new(ScramHash::Sha256, user, "pw", None);
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        b64.encode(scram.client_first())
    ))
    .await;
    let ch = c.until("</challenge>").await;
    let data = ch
        .split('>')
        .nth(1)
        .and_then(|x| x.split('<').next())
        .expect("challenge");
    let fin = scram
        .handle_server_first(&b64.decode(data).expect("b64"))
        .expect("server-first");
    c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        b64.encode(fin)
    ))
    .await;
    c.until("<success").await;
    c.send(open).await;
    c.until("</stream:features>").await;
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>").await;
    c.until("</iq>").await;
    c.send("<presence/>").await;
    c.until("/>").await;
    c
}

/// Join and read up to the subject (the last thing a joiner gets, §7.2.16).
async fn join(c: &mut Conn, room: &str, nick: &str, extra: &str) -> String {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>{extra}</x></presence>"
    ))
    .await;
    let mut all = String::new();
    loop {
        let s = c.next_stanza().await;
        all.push_str(&s);
        if s.contains("<subject") || s.contains("type='error'") {
            return all;
        }
    }
}

async fn iq(c: &mut Conn, id: &str, to: &str, kind: &str, body: &str) -> String {
    c.send(&format!(
        "<iq type='{kind}' id='{id}' to='{to}'>{body}</iq>"
    ))
    .await;
    c.stanza_with(&format!("id='{id}'")).await
}

const ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const OWNER: &str = "http://jabber.org/protocol/muc#owner";

fn submit(fields: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>",
    );
    for (k, v) in fields {
        s.push_str(&format!("<field var='{k}'><value>{v}</value></field>"));
    }
    s.push_str("</x></query>");
    s
}

async fn users(srv: &TestServer, names: &[&str]) {
    for n in names {
        srv.add_user(n, DOMAIN, "pw").await;
    }
}

#[tokio::test]
async fn reserved_room_three_occupants_tcp_and_websocket_history_and_private_messages() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol", "dave"]).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let mut carol = ws(&srv, "carol").await;

    // The service is listed by the host and describes itself.
    let items = iq(
        &mut alice,
        "d1",
        DOMAIN,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await;
    assert!(items.contains("jid='conference.localhost'"), "{items}");
    let info = iq(
        &mut alice,
        "d2",
        "conference.localhost",
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(
        info.contains("category='conference'")
            && info.contains("var='http://jabber.org/protocol/muc'"),
        "{info}"
    );

    // Creation: the room is locked (201) until the owner configures it.
    let created = join(&mut alice, ROOM, "Alice", "").await;
    assert!(
        created.contains("code='201'") && created.contains("code='110'"),
        "{created}"
    );
    assert!(
        created.contains("affiliation='owner'") && created.contains("role='moderator'"),
        "{created}"
    );
    let locked = join(&mut bob, ROOM, "Bob", "").await;
    assert!(locked.contains("item-not-found"), "{locked}");
    // Only creators may create rooms (access_create).
    let denied = join(&mut bob, "other@conference.localhost", "Bob", "").await;
    assert!(denied.contains("<not-allowed"), "{denied}");

    // The owner reads and submits the configuration form.
    let form = iq(
        &mut alice,
        "c1",
        ROOM,
        "get",
        &format!("<query xmlns='{OWNER}'/>"),
    )
    .await;
    assert!(
        form.contains("var='muc#roomconfig_roomname'")
            && form.contains("var='muc#roomconfig_whois'"),
        "{form}"
    );
    let r = iq(
        &mut bob,
        "c2",
        ROOM,
        "get",
        &format!("<query xmlns='{OWNER}'/>"),
    )
    .await;
    assert!(r.contains("type='error'"), "{r}");
    let bad = iq(
        &mut alice,
        "c3",
        ROOM,
        "set",
        &submit(&[("muc#roomconfig_maxusers", "5000")]),
    )
    .await;
    assert!(bad.contains("not-acceptable"), "{bad}");
    let ok = iq(
        &mut alice,
        "c4",
        ROOM,
        "set",
        &submit(&[
            ("muc#roomconfig_roomname", "Tea Room"),
            ("muc#roomconfig_whois", "anyone"),
            ("muc#roomconfig_changesubject", "0"),
        ]),
    )
    .await;
    assert!(ok.contains("type='result'"), "{ok}");
    let info = iq(
        &mut bob,
        "i1",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(
        info.contains("name='Tea Room'")
            && info.contains("muc_nonanonymous")
            && info.contains("muc#roominfo"),
        "{info}"
    );
    assert!(info.contains("urn:xmpp:occupant-id:0"), "{info}");

    // Bob (TCP) and Carol (WebSocket) join; everyone sees everyone.
    let b = join(&mut bob, ROOM, "Bob", "").await;
    assert!(
        b.contains("from='room@conference.localhost/Alice'") && b.contains("code='110'"),
        "{b}"
    );
    assert!(b.contains("code='100'"), "non-anonymous room says so: {b}");
    assert!(
        b.contains("<occupant-id xmlns='urn:xmpp:occupant-id:0' id="),
        "{b}"
    );
    let p = alice.stanza_with("room@conference.localhost/Bob").await;
    assert!(
        p.contains("jid='bob@localhost/r'") && p.contains("role='participant'"),
        "{p}"
    );
    let c = join(&mut carol, ROOM, "Carol", "").await;
    assert!(c.contains("/Alice'") && c.contains("/Bob'"), "{c}");
    alice.stanza_with("/Carol'").await;
    bob.stanza_with("/Carol'").await;

    // A nickname is one user's.
    let mut dave = tcp(&srv, "dave", "r").await;
    let conflict = join(&mut dave, ROOM, "Bob", "").await;
    assert!(conflict.contains("<conflict"), "{conflict}");

    // Messages from each reach all three, with the sender's occupant id.
    for (i, who) in ["alice", "bob", "carol"].iter().enumerate() {
        let text = format!("hello {i} from {who}");
        let msg = format!(
            "<message to='{ROOM}' type='groupchat' id='m{i}'><body>{text}</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>"
        );
        match *who {
            "alice" => alice.send(&msg).await,
            "bob" => bob.send(&msg).await,
            _ => carol.send(&msg).await,
        }
        for c in [&mut alice, &mut bob, &mut carol] {
            let m = c.stanza_with(&text).await;
            assert!(
                m.contains("type='groupchat'") && m.contains(&format!("id='m{i}'")),
                "{m}"
            );
            assert!(
                !m.contains("id='forged'") && m.contains("occupant-id"),
                "{m}"
            );
        }
    }
    // Subject changes are moderators' here.
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='s1'><subject>Bob's</subject></message>"
    ))
    .await;
    assert!(bob.stanza_with("id='s1'").await.contains("forbidden"));
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><subject>Tea</subject></message>"
        ))
        .await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.stanza_with("<subject>Tea</subject>").await;
    }
    // Outsiders cannot speak.
    dave.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='x1'><body>hi</body></message>"
    ))
    .await;
    assert!(dave.stanza_with("id='x1'").await.contains("not-acceptable"));

    // A late joiner gets the last two messages (maxstanzas), delayed, then the subject.
    let late = join(&mut dave, ROOM, "Dave", "<history maxstanzas='2'/>").await;
    assert!(
        !late.contains("hello 0") && late.contains("hello 1") && late.contains("hello 2"),
        "{late}"
    );
    assert!(
        late.contains("urn:xmpp:delay") && late.contains("<subject>Tea</subject>"),
        "{late}"
    );
    assert!(late.find("hello 2") < late.find("<subject>"), "{late}");
    // maxchars='0' gets none.
    let mut dave2 = tcp(&srv, "dave", "r2").await;
    let none = join(&mut dave2, ROOM, "Dave", "<history maxchars='0'/>").await;
    assert!(!none.contains("hello"), "{none}");

    // Private messages between occupants go through the room.
    bob.send(&format!(
        "<message to='{ROOM}/Carol' type='chat' id='pm1'><body>psst</body></message>"
    ))
    .await;
    let pm = carol.stanza_with("psst").await;
    assert!(
        pm.contains("from='room@conference.localhost/Bob'")
            && pm.contains("http://jabber.org/protocol/muc#user"),
        "{pm}"
    );
    bob.send(&format!(
        "<message to='{ROOM}/Nobody' type='chat' id='pm2'><body>?</body></message>"
    ))
    .await;
    assert!(bob.stanza_with("id='pm2'").await.contains("item-not-found"));

    // Self-ping (XEP-0410): answered while joined, refused when not.
    let pong = iq(
        &mut bob,
        "sp1",
        &format!("{ROOM}/Bob"),
        "get",
        "<ping xmlns='urn:xmpp:ping'/>",
    )
    .await;
    assert!(pong.contains("type='result'"), "{pong}");
    let mut outsider = tcp(&srv, "alice", "elsewhere").await;
    let no = iq(
        &mut outsider,
        "sp2",
        &format!("{ROOM}/Alice"),
        "get",
        "<ping xmlns='urn:xmpp:ping'/>",
    )
    .await;
    assert!(no.contains("not-acceptable"), "{no}");
    // An IQ to another occupant is forwarded and its answer comes back.
    carol
        .send(&format!(
            "<iq type='get' id='v1' to='{ROOM}/Bob'><query xmlns='jabber:iq:version'/></iq>"
        ))
        .await;
    let fwd = bob.stanza_with("jabber:iq:version").await;
    assert!(
        fwd.contains("from='room@conference.localhost/Carol'"),
        "{fwd}"
    );
    let fid = fwd
        .split("id='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("id")
        .to_string();
    bob.send(&format!("<iq type='result' id='{fid}' to='{ROOM}/Carol'><query xmlns='jabber:iq:version'><name>b</name></query></iq>")).await;
    let back = carol.stanza_with("id='v1'").await;
    assert!(
        back.contains("type='result'") && back.contains("from='room@conference.localhost/Bob'"),
        "{back}"
    );

    // Nickname change: 303 with the new nick, then the new presence.
    bob.send(&format!("<presence to='{ROOM}/Robert'/>")).await;
    let gone = alice.stanza_with("code='303'").await;
    assert!(
        gone.contains("nick='Robert'") && gone.contains("type='unavailable'"),
        "{gone}"
    );
    alice.stanza_with("/Robert'").await;
    // Leaving: unavailable with 110 to the leaver.
    carol
        .send(&format!("<presence to='{ROOM}/Carol' type='unavailable'/>"))
        .await;
    carol
        .stanza_all(&["type='unavailable'", "code='110'", "/Carol'"])
        .await;
    srv.stop().await;
}

#[tokio::test]
async fn kick_ban_voice_and_members_only() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol", "dave"]).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let mut carol = tcp(&srv, "carol", "r").await;
    // An instant room (§10.1.2): empty submit.
    join(&mut alice, ROOM, "Alice", "").await;
    let r = iq(
        &mut alice,
        "c1",
        ROOM,
        "set",
        &format!("<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'/></query>"),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    join(&mut bob, ROOM, "Bob", "").await;
    let c = join(&mut carol, ROOM, "Carol", "").await;
    // Semi-anonymous (the default): only moderators see real JIDs.
    assert!(
        !c.contains("jid='alice@localhost/r'") && c.contains("code='110'"),
        "{c}"
    );
    let to_bob = bob.stanza_with("/Carol'").await;
    assert!(!to_bob.contains("jid='carol@localhost/r'"), "{to_bob}");
    let to_alice = alice.stanza_all(&["/Carol'", "<presence"]).await;
    assert!(to_alice.contains("jid='carol@localhost/r'"), "{to_alice}");

    // A participant cannot kick.
    let r = iq(
        &mut bob,
        "k0",
        ROOM,
        "set",
        &format!("<query xmlns='{ADMIN}'><item nick='Carol' role='none'/></query>"),
    )
    .await;
    assert!(r.contains("forbidden"), "{r}");
    // Kick Bob: 307 with actor and reason to him and the others.
    let r = iq(&mut alice, "k1", ROOM, "set", &format!("<query xmlns='{ADMIN}'><item nick='Bob' role='none'><reason>spam</reason></item></query>")).await;
    assert!(r.contains("type='result'"), "{r}");
    let kicked = bob.stanza_with("code='307'").await;
    assert!(
        kicked.contains("code='110'")
            && kicked.contains("<reason>spam</reason>")
            && kicked.contains("nick='Alice'"),
        "{kicked}"
    );
    let seen = carol.stanza_with("code='307'").await;
    assert!(
        seen.contains("/Bob'") && !seen.contains("code='110'"),
        "{seen}"
    );
    // Bob may come back after a kick.
    let back = join(&mut bob, ROOM, "Bob", "").await;
    assert!(!back.contains("type='error'"), "{back}");

    // Ban Carol: 301; she cannot come back; the ban list shows her.
    let r = iq(&mut alice, "b1", ROOM, "set", &format!("<query xmlns='{ADMIN}'><item jid='carol@localhost' affiliation='outcast'><reason>rude</reason></item></query>")).await;
    assert!(r.contains("type='result'"), "{r}");
    let banned = carol.stanza_with("code='301'").await;
    assert!(banned.contains("type='unavailable'"), "{banned}");
    let again = join(&mut carol, ROOM, "Carol", "").await;
    assert!(again.contains("<forbidden"), "{again}");
    let list = iq(
        &mut alice,
        "b2",
        ROOM,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='outcast'/></query>"),
    )
    .await;
    assert!(
        list.contains("jid='carol@localhost'") && list.contains("rude"),
        "{list}"
    );
    let r = iq(
        &mut bob,
        "b3",
        ROOM,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='outcast'/></query>"),
    )
    .await;
    assert!(r.contains("forbidden"), "{r}");
    // The last owner stays.
    let r = iq(
        &mut alice,
        "o1",
        ROOM,
        "set",
        &format!("<query xmlns='{ADMIN}'><item jid='alice@localhost' affiliation='none'/></query>"),
    )
    .await;
    assert!(r.contains("<conflict"), "{r}");

    // Moderated room: visitors need voice; a voice request reaches the moderator.
    alice
        .send(&format!(
            "<iq type='set' id='m1' to='{ROOM}'>{}</iq>",
            submit(&[("members_by_default", "0")])
        ))
        .await;
    // §10.2.1: occupants hear that the configuration changed.
    alice.stanza_with("code='104'").await;
    let r = alice.stanza_with("id='m1'").await;
    assert!(r.contains("type='result'"), "{r}");
    let mut dave = tcp(&srv, "dave", "r").await;
    let d = join(&mut dave, ROOM, "Dave", "").await;
    assert!(d.contains("role='visitor'"), "{d}");
    dave.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='v1'><body>hi</body></message>"
    ))
    .await;
    assert!(dave.stanza_with("id='v1'").await.contains("forbidden"));
    dave.send(&format!("<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role'><value>participant</value></field></x></message>")).await;
    let req = alice.stanza_with("muc#request").await;
    assert!(
        req.contains("Dave") && req.contains("muc#request_allow"),
        "{req}"
    );
    alice.send(&format!("<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role'><value>participant</value></field><field var='muc#roomnick'><value>Dave</value></field><field var='muc#request_allow'><value>true</value></field></x></message>")).await;
    let voiced = dave.stanza_with("role='participant'").await;
    assert!(voiced.contains("/Dave'"), "{voiced}");
    dave.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='v2'><body>thanks</body></message>"
    ))
    .await;
    bob.stanza_with("thanks").await;
    // Revoke voice through the admin IQ.
    iq(
        &mut alice,
        "v3",
        ROOM,
        "set",
        &format!("<query xmlns='{ADMIN}'><item nick='Dave' role='visitor'/></query>"),
    )
    .await;
    dave.stanza_with("role='visitor'").await;

    // Members-only: non-members are refused and removed (322).
    let r = iq(
        &mut alice,
        "mo1",
        ROOM,
        "set",
        &submit(&[("muc#roomconfig_membersonly", "1")]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    let out = bob.stanza_with("code='322'").await;
    assert!(out.contains("type='unavailable'"), "{out}");
    let refused = join(&mut bob, ROOM, "Bob", "").await;
    assert!(refused.contains("registration-required"), "{refused}");
    // A mediated invitation from the owner makes Bob a member.
    alice.send(&format!("<message to='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob@localhost'><reason>come</reason></invite></x></message>")).await;
    let inv = bob.stanza_with("<invite").await;
    assert!(
        inv.contains("from='alice@localhost'")
            && inv.contains("jabber:x:conference")
            && inv.contains("come"),
        "{inv}"
    );
    let member = join(&mut bob, ROOM, "Bob", "").await;
    assert!(
        member.contains("affiliation='member'") && !member.contains("type='error'"),
        "{member}"
    );
    // A direct invitation (XEP-0249) passes user to user.
    alice
        .send(&format!(
            "<message to='carol@localhost'><x xmlns='jabber:x:conference' jid='{ROOM}'/></message>"
        ))
        .await;
    carol.stanza_with("jabber:x:conference").await;

    // Destroy with an alternate venue.
    let r = iq(&mut alice, "x1", ROOM, "set", &format!("<query xmlns='{OWNER}'><destroy jid='new@conference.localhost'><reason>moved</reason></destroy></query>")).await;
    assert!(r.contains("type='result'"), "{r}");
    let d = bob.stanza_with("<destroy").await;
    assert!(
        d.contains("jid='new@conference.localhost'")
            && d.contains("moved")
            && d.contains("type='unavailable'"),
        "{d}"
    );
    let gone = iq(
        &mut bob,
        "x2",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(gone.contains("item-not-found"), "{gone}");
    srv.stop().await;
}

#[tokio::test]
async fn password_max_users_temporary_rooms_and_limits() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol"]).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let mut carol = tcp(&srv, "carol", "r").await;
    join(&mut alice, ROOM, "Alice", "").await;
    let r = iq(
        &mut alice,
        "c1",
        ROOM,
        "set",
        &submit(&[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "s3cret"),
            ("muc#roomconfig_maxusers", "2"),
            ("muc#roomconfig_publicroom", "0"),
        ]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    // Hidden rooms are not listed.
    let items = iq(
        &mut bob,
        "l1",
        "conference.localhost",
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await;
    assert!(!items.contains(ROOM), "{items}");
    let e = join(&mut bob, ROOM, "Bob", "").await;
    assert!(e.contains("not-authorized"), "{e}");
    let e = join(&mut bob, ROOM, "Bob", "<password>wrong</password>").await;
    assert!(e.contains("not-authorized"), "{e}");
    let ok = join(&mut bob, ROOM, "Bob", "<password>s3cret</password>").await;
    assert!(!ok.contains("type='error'"), "{ok}");
    let full = join(&mut carol, ROOM, "Carol", "<password>s3cret</password>").await;
    assert!(full.contains("service-unavailable"), "{full}");
    // A join without a nickname is malformed.
    carol
        .send(&format!(
            "<presence to='{ROOM}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    assert!(
        carol
            .stanza_with("jid-malformed")
            .await
            .contains("type='error'")
    );
    // Messages to a room that does not exist.
    carol.send("<message to='nope@conference.localhost' type='groupchat' id='n1'><body>x</body></message>").await;
    assert!(
        carol
            .stanza_with("id='n1'")
            .await
            .contains("item-not-found")
    );

    // A temporary room goes away with its last occupant; a public one is listed meanwhile.
    let t = "temp@conference.localhost";
    join(&mut alice, t, "A", "").await;
    iq(
        &mut alice,
        "c2",
        t,
        "set",
        &format!("<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'/></query>"),
    )
    .await;
    let items = iq(
        &mut bob,
        "l2",
        "conference.localhost",
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await;
    assert!(items.contains("jid='temp@conference.localhost'"), "{items}");
    alice
        .send(&format!("<presence to='{t}/A' type='unavailable'/>"))
        .await;
    alice.stanza_with("type='unavailable'").await;
    let gone = iq(
        &mut bob,
        "i1",
        t,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(gone.contains("item-not-found"), "{gone}");
    // Cancelling the initial configuration destroys a new room.
    let c = "cancel@conference.localhost";
    join(&mut alice, c, "A", "").await;
    let r = iq(
        &mut alice,
        "c3",
        c,
        "set",
        &format!("<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='cancel'/></query>"),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    let gone = iq(
        &mut bob,
        "i2",
        c,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(gone.contains("item-not-found"), "{gone}");

    // max_user_conferences: 3 rooms at once.
    for i in 0..2 {
        let r = join(&mut alice, &format!("r{i}@conference.localhost"), "A", "").await;
        assert!(!r.contains("type='error'"), "{r}");
    }
    let r = join(&mut alice, "r9@conference.localhost", "A", "").await;
    assert!(r.contains("resource-constraint"), "{r}");
    srv.stop().await;
}

/// Restart the server on the same data directory (and database).
async fn restart(srv: TestServer) -> TestServer {
    let TestServer {
        server, dir, pg, ..
    } = srv;
    if let Some(s) = server {
        s.shutdown().await;
    }
    let mut text = config_text(dir.path(), "", MODULES);
    if let Some(db) = &pg {
        text.push_str(&pg_keys(&db.url));
    }
    let mut srv = TestServer::start_with_config_text(dir, &text).await;
    srv.pg = pg;
    srv
}

#[tokio::test]
async fn persistent_room_survives_restart_and_account_removal_cleans_affiliations() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol"]).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    join(&mut alice, ROOM, "Alice", "").await;
    let r = iq(
        &mut alice,
        "c1",
        ROOM,
        "set",
        &submit(&[
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_roomname", "Kept"),
            ("muc#roomconfig_membersonly", "1"),
        ]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><subject>Still here</subject></message>"
        ))
        .await;
    alice.stanza_with("Still here").await;
    let r = iq(&mut alice, "a1", ROOM, "set", &format!("<query xmlns='{ADMIN}'><item jid='bob@localhost' affiliation='member'/><item jid='carol@localhost' affiliation='admin'/></query>")).await;
    assert!(r.contains("type='result'"), "{r}");
    // Everyone leaves: a persistent room stays.
    alice
        .send(&format!("<presence to='{ROOM}/Alice' type='unavailable'/>"))
        .await;
    alice.stanza_with("type='unavailable'").await;
    drop(alice);

    let srv = restart(srv).await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let info = iq(
        &mut bob,
        "i1",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(
        info.contains("name='Kept'")
            && info.contains("muc_persistent")
            && info.contains("muc_membersonly"),
        "{info}"
    );
    // Bob is still a member of the members-only room; the subject is back.
    let j = join(&mut bob, ROOM, "Bob", "").await;
    assert!(
        j.contains("affiliation='member'") && j.contains("<subject>Still here</subject>"),
        "{j}"
    );
    let mut alice = tcp(&srv, "alice", "r").await;
    let j = join(&mut alice, ROOM, "Alice", "").await;
    assert!(j.contains("affiliation='owner'"), "{j}");
    let admins = iq(
        &mut alice,
        "l1",
        ROOM,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='admin'/></query>"),
    )
    .await;
    assert!(admins.contains("jid='carol@localhost'"), "{admins}");

    // Removing Carol's account removes her affiliation, stored too.
    let cx = srv.core().cx_of(DOMAIN).expect("host");
    cx.remove_user(DOMAIN, "carol").await.expect("remove");
    let admins = iq(
        &mut alice,
        "l2",
        ROOM,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='admin'/></query>"),
    )
    .await;
    assert!(!admins.contains("carol@localhost"), "{admins}");
    drop(alice);
    drop(bob);
    let srv = restart(srv).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    let admins = iq(
        &mut alice,
        "l3",
        ROOM,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='admin'/></query>"),
    )
    .await;
    assert!(
        admins.contains("type='result'") && !admins.contains("carol@localhost"),
        "{admins}"
    );
    // Making the room temporary again deletes it once empty, for good.
    let j = join(&mut alice, ROOM, "Alice", "").await;
    assert!(!j.contains("type='error'"), "{j}");
    iq(
        &mut alice,
        "c2",
        ROOM,
        "set",
        &submit(&[("muc#roomconfig_persistentroom", "0")]),
    )
    .await;
    alice
        .send(&format!("<presence to='{ROOM}/Alice' type='unavailable'/>"))
        .await;
    alice.stanza_with("type='unavailable'").await;
    drop(alice);
    let srv = restart(srv).await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let gone = iq(
        &mut bob,
        "i9",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(gone.contains("item-not-found"), "{gone}");
    srv.stop().await;
}

#[tokio::test]
async fn room_archive_pages_with_rsm() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob"]).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    let mut bob = tcp(&srv, "bob", "r").await;
    join(&mut alice, ROOM, "Alice", "").await;
    // Not archived yet: the query is refused and the feature not advertised.
    let q = "<query xmlns='urn:xmpp:mam:2' queryid='q0'/>";
    let r = iq(&mut alice, "a0", ROOM, "set", q).await;
    assert!(r.contains("service-unavailable"), "{r}");
    let r = iq(
        &mut alice,
        "c1",
        ROOM,
        "set",
        &submit(&[("mam", "1"), ("muc#roomconfig_membersonly", "1")]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    let info = iq(
        &mut alice,
        "i1",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(info.contains("var='urn:xmpp:mam:2'"), "{info}");
    let mut ids = Vec::new();
    for i in 1..=5 {
        alice.send(&format!("<message to='{ROOM}' type='groupchat'><body>n{i}</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='{ROOM}'/></message>")).await;
        let m = alice.stanza_with(&format!("n{i}")).await;
        assert!(!m.contains("id='forged'"), "{m}");
        let sid = m.split("<stanza-id").nth(1).expect("stanza-id");
        assert!(sid.contains(&format!("by='{ROOM}'")), "{m}");
        ids.push(
            sid.split("id='")
                .nth(1)
                .and_then(|s| s.split('\'').next())
                .expect("id")
                .to_string(),
        );
    }
    // The search form.
    let f = iq(
        &mut alice,
        "f1",
        ROOM,
        "get",
        "<query xmlns='urn:xmpp:mam:2'/>",
    )
    .await;
    assert!(
        f.contains("var='before-id'") && f.contains("var='start'"),
        "{f}"
    );
    // First page of two, then the next after its last id.
    let page = |extra: &str| {
        format!(
            "<query xmlns='urn:xmpp:mam:2' queryid='q1'><set xmlns='http://jabber.org/protocol/rsm'>{extra}</set></query>"
        )
    };
    alice
        .send(&format!(
            "<iq type='set' id='p1' to='{ROOM}'>{}</iq>",
            page("<max>2</max>")
        ))
        .await;
    let r1 = alice.stanza_with("queryid='q1'").await;
    assert!(
        r1.contains("n1") && r1.contains("urn:xmpp:forward:0") && r1.contains("urn:xmpp:delay"),
        "{r1}"
    );
    assert!(r1.contains(&format!("from='{ROOM}/Alice'")), "{r1}");
    assert!(alice.stanza_with("queryid='q1'").await.contains("n2"));
    let fin = alice.stanza_with("id='p1'").await;
    assert!(
        fin.contains("<fin")
            && !fin.contains("complete='true'")
            && fin.contains(&format!("<last>{}</last>", ids[1])),
        "{fin}"
    );
    alice
        .send(&format!(
            "<iq type='set' id='p2' to='{ROOM}'>{}</iq>",
            page(&format!("<max>10</max><after>{}</after>", ids[1]))
        ))
        .await;
    let mut got = String::new();
    loop {
        let s = alice.next_stanza().await;
        got.push_str(&s);
        if s.contains("id='p2'") {
            break;
        }
    }
    assert!(
        !got.contains(">n2<")
            && got.contains("n3")
            && got.contains("n5")
            && got.contains("complete='true'"),
        "{got}"
    );
    // The last page (empty <before/>).
    alice
        .send(&format!(
            "<iq type='set' id='p3' to='{ROOM}'>{}</iq>",
            page("<max>1</max><before/>")
        ))
        .await;
    let last = alice.stanza_with("queryid='q1'").await;
    assert!(last.contains("n5"), "{last}");
    // A filter by time that excludes everything.
    let none = iq(&mut alice, "p4", ROOM, "set", "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field><field var='end'><value>2000-01-01T00:00:00Z</value></field></x></query>").await;
    assert!(none.contains("complete='true'"), "{none}");
    // A non-member may not read a members-only room's archive.
    let r = iq(
        &mut bob,
        "b1",
        ROOM,
        "set",
        "<query xmlns='urn:xmpp:mam:2'/>",
    )
    .await;
    assert!(r.contains("forbidden"), "{r}");
    let r = iq(
        &mut alice,
        "p5",
        ROOM,
        "set",
        &page("<after>nonsense</after>"),
    )
    .await;
    assert!(r.contains("item-not-found"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn service_name_inline_access_rules_and_caps() {
    let modules = "modules:\n  mod_disco: {}\n  mod_muc:\n    host: \"chat.@HOST@\"\n    name: Salons\n    access_admin:\n      - allow: admin\n    access_persistent: [deny]\n    max_room_name: 5\n    max_room_id: infinity\n    default_room_options:\n      public: false\n      allow_subscription: true\n      vcard: \"<vCard xmlns='vcard-temp'><FN>Default room</FN></vCard>\"\nacl:\n  admin:\n    user: root\n";
    let srv = TestServer::start_with("", modules).await;
    users(&srv, &["alice", "root"]).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    let mut root = tcp(&srv, "root", "r").await;
    let room = "den@chat.localhost";
    // The service is where `host` says, with its name.
    let info = iq(
        &mut alice,
        "d1",
        "chat.localhost",
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(info.contains("name='Salons'"), "{info}");
    let items = iq(
        &mut alice,
        "d2",
        DOMAIN,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await;
    assert!(
        items.contains("jid='chat.localhost'") && !items.contains("conference.localhost"),
        "{items}"
    );
    join(&mut alice, room, "A", "").await;
    // default_room_options: ejabberd's `vcard` is the new room's vCard.
    let v = iq(&mut alice, "v0", room, "get", "<vCard xmlns='vcard-temp'/>").await;
    assert!(v.contains("<FN>Default room</FN>"), "{v}");
    // default_room_options: hidden.
    let r = iq(
        &mut alice,
        "c0",
        room,
        "get",
        "<query xmlns='http://jabber.org/protocol/muc#owner'/>",
    )
    .await;
    assert!(r.contains("var='muc#roomconfig_publicroom'"), "{r}");
    let f = r
        .split("var='muc#roomconfig_publicroom'")
        .nth(1)
        .expect("field");
    assert!(
        f.starts_with("><value>0</value>") || f.contains("<value>0</value></field>"),
        "{r}"
    );
    // max_room_name caps the title; access_persistent refuses persistence.
    let r = iq(
        &mut alice,
        "c1",
        room,
        "set",
        &submit(&[("muc#roomconfig_roomname", "Too long")]),
    )
    .await;
    assert!(r.contains("not-acceptable"), "{r}");
    let r = iq(
        &mut alice,
        "c2",
        room,
        "set",
        &submit(&[("muc#roomconfig_persistentroom", "1")]),
    )
    .await;
    assert!(r.contains("forbidden"), "{r}");
    let r = iq(
        &mut alice,
        "c3",
        room,
        "set",
        &submit(&[("muc#roomconfig_roomname", "Den")]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    // The service administrator (inline access_admin) is an owner everywhere.
    let j = join(&mut root, room, "Root", "").await;
    assert!(j.contains("affiliation='owner'"), "{j}");
    let r = iq(
        &mut root,
        "k1",
        room,
        "set",
        &submit(&[("muc#roomconfig_roomname", "Root")]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    alice.stanza_with("code='104'").await;
    // Leave, to come back with history limits.
    alice
        .send(&format!("<presence to='{room}/A' type='unavailable'/>"))
        .await;
    alice
        .stanza_all(&["type='unavailable'", "code='110'"])
        .await;
    // History by time: nothing older than 0 seconds... and all since 2000.
    root.send(&format!(
        "<message to='{room}' type='groupchat'><body>old news</body></message>"
    ))
    .await;
    root.stanza_with("old news").await;
    let none = join(
        &mut alice,
        room,
        "A",
        "<history since='2999-01-01T00:00:00Z'/>",
    )
    .await;
    assert!(!none.contains("old news"), "{none}");
    alice
        .send(&format!("<presence to='{room}/A' type='unavailable'/>"))
        .await;
    alice
        .stanza_all(&["type='unavailable'", "code='110'"])
        .await;
    let all = join(
        &mut alice,
        room,
        "A",
        "<history since='2000-01-01T00:00:00Z' seconds='3600'/>",
    )
    .await;
    assert!(all.contains("old news"), "{all}");
    srv.stop().await;
}

const REGISTER: &str = "jabber:iq:register";

fn register_form(nick: &str) -> String {
    format!(
        "<query xmlns='{REGISTER}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field><field var='muc#register_roomnick'><value>{nick}</value></field></x></query>"
    )
}

const ROOMUSER: &str =
    "<query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/>";

#[tokio::test]
async fn registered_nicknames_are_reserved_enforced_and_kept() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol", "dave"]).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let mut carol = tcp(&srv, "carol", "r").await;
    join(&mut alice, ROOM, "Alice", "").await;
    let r = iq(
        &mut alice,
        "c1",
        ROOM,
        "set",
        &submit(&[("muc#roomconfig_persistentroom", "1")]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    let info = iq(
        &mut bob,
        "i0",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(info.contains("var='jabber:iq:register'"), "{info}");
    join(&mut bob, ROOM, "Bob", "").await;
    alice.stanza_with("/Bob'").await;

    // The registration form; nothing registered yet.
    let form = iq(
        &mut bob,
        "g1",
        ROOM,
        "get",
        &format!("<query xmlns='{REGISTER}'/>"),
    )
    .await;
    assert!(
        form.contains("var='muc#register_roomnick'")
            && form.contains("http://jabber.org/protocol/muc#register")
            && !form.contains("<registered"),
        "{form}"
    );
    let none = iq(&mut bob, "n0", ROOM, "get", ROOMUSER).await;
    assert!(
        none.contains("type='result'") && !none.contains("<identity"),
        "{none}"
    );
    // A form of another kind, or no nickname, is refused.
    let bad = iq(
        &mut bob,
        "g2",
        ROOM,
        "set",
        &format!("<query xmlns='{REGISTER}'/>"),
    )
    .await;
    assert!(bad.contains("bad-request"), "{bad}");
    let bad = iq(&mut bob, "g3", ROOM, "set", &register_form("")).await;
    assert!(bad.contains("not-acceptable"), "{bad}");
    // Bob registers "Bobby": he becomes a member, everyone is told.
    let ok = iq(&mut bob, "g4", ROOM, "set", &register_form("Bobby")).await;
    assert!(ok.contains("type='result'"), "{ok}");
    let p = alice.stanza_with("/Bob'").await;
    assert!(p.contains("affiliation='member'"), "{p}");
    let nick = iq(&mut bob, "n1", ROOM, "get", ROOMUSER).await;
    assert!(
        nick.contains("category='conference'") && nick.contains("name='Bobby'"),
        "{nick}"
    );
    let again = iq(
        &mut bob,
        "g5",
        ROOM,
        "get",
        &format!("<query xmlns='{REGISTER}'/>"),
    )
    .await;
    assert!(
        again.contains("<registered") && again.contains("<username>Bobby</username>"),
        "{again}"
    );
    let members = iq(
        &mut alice,
        "l1",
        ROOM,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='member'/></query>"),
    )
    .await;
    assert!(
        members.contains("jid='bob@localhost'") && members.contains("nick='Bobby'"),
        "{members}"
    );

    // Another user may not take the registered nickname, nor register a
    // nickname that is in use or registered.
    let taken = join(&mut carol, ROOM, "Bobby", "").await;
    assert!(taken.contains("<conflict"), "{taken}");
    join(&mut carol, ROOM, "Carol", "").await;
    let r = iq(&mut carol, "g6", ROOM, "set", &register_form("Bob")).await;
    assert!(r.contains("<conflict"), "{r}");
    let r = iq(&mut carol, "g7", ROOM, "set", &register_form("Bobby")).await;
    assert!(r.contains("<conflict"), "{r}");

    // With enforcement on, Bob must use his registered nickname.
    let r = iq(
        &mut alice,
        "c2",
        ROOM,
        "set",
        &submit(&[("enforce_reserved_nick", "1")]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    bob.send(&format!("<presence to='{ROOM}/Robert'/>")).await;
    let refused = bob.stanza_all(&["type='error'", "<presence"]).await;
    assert!(refused.contains("not-acceptable"), "{refused}");
    bob.send(&format!("<presence to='{ROOM}/Bob' type='unavailable'/>"))
        .await;
    bob.stanza_with("type='unavailable'").await;
    let r = join(&mut bob, ROOM, "Bob", "").await;
    assert!(r.contains("not-acceptable"), "{r}");
    let r = join(&mut bob, ROOM, "Bobby", "").await;
    assert!(!r.contains("type='error'"), "{r}");

    // An admin registers a nickname with a membership (§9.3): the user
    // occupying it is removed.
    let mut dave = tcp(&srv, "dave", "r").await;
    join(&mut dave, ROOM, "Dee", "").await;
    let r = iq(
        &mut alice,
        "a1",
        ROOM,
        "set",
        &format!(
            "<query xmlns='{ADMIN}'><item affiliation='member' jid='carol@localhost' nick='Dee'/></query>"
        ),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    let out = dave.stanza_with("code='307'").await;
    assert!(
        out.contains("type='unavailable'") && out.contains("registered by another user"),
        "{out}"
    );
    let r = iq(
        &mut alice,
        "a2",
        ROOM,
        "set",
        &format!(
            "<query xmlns='{ADMIN}'><item affiliation='member' jid='dave@localhost' nick='Bobby'/></query>"
        ),
    )
    .await;
    assert!(r.contains("<conflict"), "{r}");
    drop((alice, bob, carol, dave));

    // Registrations are stored with the room.
    let srv = restart(srv).await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let mut carol = tcp(&srv, "carol", "r").await;
    let nick = iq(&mut bob, "n2", ROOM, "get", ROOMUSER).await;
    assert!(nick.contains("name='Bobby'"), "{nick}");
    let taken = join(&mut carol, ROOM, "Bobby", "").await;
    assert!(taken.contains("<conflict"), "{taken}");
    let mine = iq(&mut carol, "n3", ROOM, "get", ROOMUSER).await;
    assert!(mine.contains("name='Dee'"), "{mine}");

    // Bob cancels his registration: no longer a member, the nickname is free.
    let r = iq(
        &mut bob,
        "u1",
        ROOM,
        "set",
        &format!("<query xmlns='{REGISTER}'><remove/></query>"),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    let none = iq(&mut bob, "n4", ROOM, "get", ROOMUSER).await;
    assert!(!none.contains("<identity"), "{none}");
    let r = iq(
        &mut bob,
        "u2",
        ROOM,
        "set",
        &format!("<query xmlns='{REGISTER}'><remove/></query>"),
    )
    .await;
    assert!(r.contains("item-not-found"), "{r}");
    // Enforcement holds Carol to her registered "Dee"; Dave may take "Bobby".
    let r = join(&mut carol, ROOM, "Carol", "").await;
    assert!(r.contains("not-acceptable"), "{r}");
    let mut dave = tcp(&srv, "dave", "r").await;
    let ok = join(&mut dave, ROOM, "Bobby", "").await;
    assert!(!ok.contains("type='error'"), "{ok}");
    srv.stop().await;
}

#[tokio::test]
async fn room_vcard_avatar_set_by_owners_announced_and_kept() {
    use sha1::Digest;
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol"]).await;
    let mut alice = tcp(&srv, "alice", "r").await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let mut carol = tcp(&srv, "carol", "r").await;
    join(&mut alice, ROOM, "Alice", "").await;
    let r = iq(
        &mut alice,
        "c1",
        ROOM,
        "set",
        &submit(&[("muc#roomconfig_persistentroom", "1")]),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    join(&mut bob, ROOM, "Bob", "").await;
    // No vCard yet: an empty one, for anyone.
    let empty = iq(&mut carol, "v0", ROOM, "get", "<vCard xmlns='vcard-temp'/>").await;
    assert!(
        empty.contains("type='result'") && empty.contains("vcard-temp") && !empty.contains("PHOTO"),
        "{empty}"
    );
    let image = b"not really a png";
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    let hash: String = sha1::Sha1::digest(image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let vcard = format!(
        "<vCard xmlns='vcard-temp'><FN>Tea Room</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{b64}</BINVAL></PHOTO></vCard>"
    );
    // Only owners set it.
    let r = iq(&mut bob, "v1", ROOM, "set", &vcard).await;
    assert!(r.contains("forbidden"), "{r}");
    let r = iq(
        &mut alice,
        "v2",
        ROOM,
        "set",
        "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>!!not base64!!</BINVAL></PHOTO></vCard>",
    )
    .await;
    assert!(r.contains("bad-request"), "{r}");
    alice
        .send(&format!("<iq type='set' id='v3' to='{ROOM}'>{vcard}</iq>"))
        .await;
    // Occupants are told by presence from the room, then status 104.
    let p = bob.stanza_all(&["<presence", "vcard-temp:x:update"]).await;
    assert!(
        p.contains(&format!("<photo>{hash}</photo>")) && p.contains(&format!("from='{ROOM}'")),
        "{p}"
    );
    let m = bob.stanza_with("code='104'").await;
    assert!(m.contains("type='groupchat'"), "{m}");
    assert!(alice.stanza_with("id='v3'").await.contains("type='result'"));
    let got = iq(&mut carol, "v4", ROOM, "get", "<vCard xmlns='vcard-temp'/>").await;
    assert!(got.contains(&b64) && got.contains("Tea Room"), "{got}");
    let info = iq(
        &mut carol,
        "i1",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(
        info.contains("var='muc#roominfo_avatarhash'")
            && info.contains(&hash)
            && info.contains("var='vcard-temp'"),
        "{info}"
    );
    // A joiner gets the hash after the subject.
    let j = join(&mut carol, ROOM, "Carol", "").await;
    assert!(!j.contains("type='error'"), "{j}");
    let p = carol.stanza_with("vcard-temp:x:update").await;
    assert!(p.contains(&hash), "{p}");
    drop((alice, bob, carol));

    // Stored with the room.
    let srv = restart(srv).await;
    let mut bob = tcp(&srv, "bob", "r").await;
    let got = iq(&mut bob, "v5", ROOM, "get", "<vCard xmlns='vcard-temp'/>").await;
    assert!(got.contains(&b64), "{got}");
    let info = iq(
        &mut bob,
        "i2",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(info.contains(&hash), "{info}");
    // Removing the photo: an empty hash is announced and the info loses it.
    let mut alice = tcp(&srv, "alice", "r").await;
    join(&mut alice, ROOM, "Alice", "").await;
    join(&mut bob, ROOM, "Bob", "").await;
    let p = bob.stanza_with("vcard-temp:x:update").await;
    assert!(p.contains(&hash), "{p}");
    alice
        .send(&format!(
            "<iq type='set' id='v6' to='{ROOM}'><vCard xmlns='vcard-temp'><FN>Tea Room</FN></vCard></iq>"
        ))
        .await;
    let p = bob.stanza_all(&["<presence", "vcard-temp:x:update"]).await;
    assert!(p.contains("<photo/>"), "{p}");
    let info = iq(
        &mut bob,
        "i3",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(!info.contains("avatarhash"), "{info}");
    srv.stop().await;
}
