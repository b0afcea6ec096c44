//! Writing a [`Document`] as XEP-0227 XML.

use super::model::{Document, UserData};
use super::{NS_PIE, NS_SCRAM};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;
use palaver_proto::stanza::set_attr;

fn text_el(name: &str, ns: &str, text: impl Into<String>) -> Element {
    Element::builder(name, ns).append(text.into()).build()
}

/// A `<user/>` element: credentials, then the modules' elements.
pub fn user_element(u: &UserData) -> Element {
    let mut el = Element::bare("user", NS_PIE);
    set_attr(&mut el, "name", u.name.clone());
    if let Some(p) = &u.password {
        set_attr(&mut el, "password", p.clone());
    }
    for c in &u.scram {
        let mut s = Element::bare("scram-credentials", NS_SCRAM);
        set_attr(&mut s, "mechanism", format!("SCRAM-{}", c.hash.name()));
        s.append_child(text_el("iter-count", NS_SCRAM, c.iterations.to_string()));
        s.append_child(text_el("salt", NS_SCRAM, B64.encode(&c.salt)));
        s.append_child(text_el("server-key", NS_SCRAM, B64.encode(&c.server_key)));
        s.append_child(text_el("stored-key", NS_SCRAM, B64.encode(&c.stored_key)));
        el.append_child(s);
    }
    for item in &u.data {
        el.append_child(item.el.clone());
    }
    el
}

/// The document as XEP-0227 XML (one file, one user per line).
pub fn to_xml(doc: &Document) -> String {
    let mut out = String::from("<?xml version='1.0' encoding='UTF-8'?>\n");
    out.push_str("<server-data xmlns='");
    out.push_str(NS_PIE);
    out.push_str("'>\n");
    for h in &doc.hosts {
        out.push_str("  <host jid='");
        palaver_proto::writer::escape_into(&mut out, &h.jid);
        out.push_str("'>\n");
        for u in &h.users {
            out.push_str("    ");
            palaver_proto::writer::write_element(&mut out, &user_element(u), NS_PIE);
            out.push('\n');
        }
        out.push_str("  </host>\n");
    }
    out.push_str("</server-data>\n");
    out
}
