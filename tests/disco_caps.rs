//! XEP-0115 server capabilities in stream features and XEP-0157 contact addresses.
mod common;
use common::*;

fn attr<'a>(s: &'a str, name: &str) -> &'a str {
    let key = format!("{name}='");
    let start = s
        .find(&key)
        .map(|i| i + key.len())
        .expect("attribute present");
    let end = s[start..].find('\'').expect("attribute end") + start;
    &s[start..end]
}

#[tokio::test]
async fn caps_and_contact_addresses() {
    let modules = "modules:\n  mod_disco:\n    server_info:\n      abuse-addresses: ['mailto:abuse@localhost']\n      admin-addresses: ['xmpp:admin@localhost', 'mailto:admin@localhost']\n  mod_ping: {}\n";
    let srv = TestServer::start_with("", modules).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut c = Raw::connect(srv.addr).await;
    let features = c.open(DOMAIN).await;
    assert!(
        features.contains("<c xmlns='http://jabber.org/protocol/caps'"),
        "{features}"
    );
    let c_start = features
        .find("<c xmlns='http://jabber.org/protocol/caps'")
        .expect("caps");
    let caps = &features[c_start..];
    let node = attr(caps, "node").to_string();
    let ver = attr(caps, "ver").to_string();
    assert_eq!(attr(caps, "hash"), "sha-1");
    drop(c);

    let mut c = raw_login(srv.addr, "alice", DOMAIN, "pw", "r").await;
    c.send(&format!("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}#{ver}'/></iq>")).await;
    let r = c.until("</iq>").await;
    assert!(r.contains("type='result'"), "{r}");
    assert!(r.contains("http://jabber.org/network/serverinfo"), "{r}");
    assert!(
        r.contains("mailto:abuse@localhost") && r.contains("xmpp:admin@localhost"),
        "{r}"
    );
    assert!(r.contains("urn:xmpp:ping"), "{r}");
    // Recompute the verification string from the answer (XEP-0115 §5.1).
    let el: minidom::Element = r[r.find("<iq").expect("iq")..]
        .replacen("<iq ", "<iq xmlns='jabber:client' ", 1)
        .parse()
        .expect("xml");
    let q = el
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    let mut s = String::new();
    let mut ids: Vec<String> = q
        .children()
        .filter(|e| e.name() == "identity")
        .map(|i| {
            format!(
                "{}/{}//{}<",
                i.attr("category").unwrap_or(""),
                i.attr("type").unwrap_or(""),
                i.attr("name").unwrap_or("")
            )
        })
        .collect();
    ids.sort();
    s.extend(ids);
    let mut feats: Vec<String> = q
        .children()
        .filter(|e| e.name() == "feature")
        .map(|f| format!("{}<", f.attr("var").unwrap_or("")))
        .collect();
    feats.sort();
    s.extend(feats);
    let x = q.get_child("x", "jabber:x:data").expect("form");
    s.push_str("http://jabber.org/network/serverinfo<");
    let mut fields: Vec<&minidom::Element> = x
        .children()
        .filter(|f| f.attr("var") != Some("FORM_TYPE"))
        .collect();
    fields.sort_by_key(|f| f.attr("var").unwrap_or("").to_string());
    for f in fields {
        s.push_str(f.attr("var").unwrap_or(""));
        s.push('<');
        let mut vals: Vec<String> = f.children().map(|v| v.text()).collect();
        vals.sort();
        for v in vals {
            s.push_str(&v);
            s.push('<');
        }
    }
    use base64::Engine;
    use sha1::Digest;
    let expect = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()));
    assert_eq!(expect, ver);
    // An unknown node is item-not-found.
    c.send("<iq type='get' id='d2' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='nope'/></iq>").await;
    let r = c.until("</iq>").await;
    assert!(r.contains("item-not-found"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn bad_contact_address_is_a_config_error() {
    let text = config_text(
        std::path::Path::new("/tmp"),
        "",
        "modules:\n  mod_disco:\n    server_info:\n      abuse: ['x']\n",
    );
    let config = palaver_server::Config::parse(&text).expect("parses");
    let err = palaver_server::server::check_modules(&config, &palaver_modules::registry())
        .expect_err("rejected");
    assert!(
        err.message.contains("mod_disco") && err.message.contains("abuse"),
        "{}",
        err.message
    );
}
