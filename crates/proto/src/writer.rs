//! Serialization of elements onto an XMPP stream.
//!
//! Elements are written without redundant namespace declarations: an
//! element whose namespace equals its parent's (or the stream's default
//! namespace for top-level elements) carries no `xmlns`.

use minidom::{Element, Node};

/// Escape text or an attribute value into `out`.
pub fn escape_into(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'\'' => "&apos;",
            b'"' => "&quot;",
            b'\r' => "&#xD;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// Serialize `el` into `out`, assuming the in-scope default namespace is `parent_ns`.
pub fn write_element(out: &mut String, el: &Element, parent_ns: &str) {
    write_root(out, el, parent_ns, None);
}

/// ` name='value'` (the value escaped).
pub fn write_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("='");
    escape_into(out, value);
    out.push('\'');
}

/// [`write_element`], with a `to` attribute added in its place among the
/// others (a stanza whose recipient is kept beside its element,
/// `crate::stanza::Stanza`). Returns the offset in `out` where `to` is (or,
/// without one, would be) written.
pub fn write_root(out: &mut String, el: &Element, parent_ns: &str, to: Option<&str>) -> usize {
    out.push('<');
    out.push_str(el.name());
    let own_ns;
    let ns: &str = if el.has_ns(parent_ns) {
        parent_ns
    } else {
        own_ns = el.ns();
        out.push_str(" xmlns='");
        escape_into(out, &own_ns);
        out.push('\'');
        &own_ns
    };
    // Attributes come in their map's order (un-namespaced ones by name,
    // then namespaced ones): `to` goes where the map would have put it.
    let mut to_at = None;
    let mut extra = 0usize;
    for ((ans, name), value) in el.attrs().iter() {
        if to_at.is_none() && (!ans.is_none() || name.as_str() > "to") {
            to_at = Some(out.len());
            if let Some(to) = to {
                write_attr(out, "to", to);
            }
        }
        out.push(' ');
        if ans.is_none() {
            out.push_str(name.as_str());
        } else if ans.as_str() == crate::ns::XML {
            out.push_str("xml:");
            out.push_str(name.as_str());
        } else {
            // Rare: a namespaced attribute. Declare a prefix for it here.
            let prefix = format!("a{extra}");
            extra += 1;
            out.push_str("xmlns:");
            out.push_str(&prefix);
            out.push_str("='");
            escape_into(out, ans.as_str());
            out.push_str("' ");
            out.push_str(&prefix);
            out.push(':');
            out.push_str(name.as_str());
        }
        out.push_str("='");
        escape_into(out, value);
        out.push('\'');
    }
    let to_at = match to_at {
        Some(at) => at,
        None => {
            let at = out.len();
            if let Some(to) = to {
                write_attr(out, "to", to);
            }
            at
        }
    };
    write_content(out, el, ns);
    to_at
}

/// The children of `el` and its end tag (after its start tag's attributes).
fn write_content(out: &mut String, el: &Element, ns: &str) {
    let mut nodes = el.nodes().peekable();
    if nodes.peek().is_none() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for node in nodes {
        match node {
            Node::Element(child) => write_element(out, child, ns),
            Node::Text(t) => escape_into(out, t),
        }
    }
    out.push_str("</");
    out.push_str(el.name());
    out.push('>');
}

/// Serialize to a new string with `parent_ns` as default namespace.
pub fn to_string(el: &Element, parent_ns: &str) -> String {
    let mut s = String::with_capacity(256);
    write_element(&mut s, el, parent_ns);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let src = "<message xmlns='jabber:client' to='a@b' xml:lang='en'><body>a &lt; b &amp; &apos;c&apos;</body><x xmlns='urn:x' y='&quot;'/></message>";
        let el: Element = src.parse().unwrap();
        let out = to_string(&el, "jabber:client");
        assert!(out.starts_with("<message "));
        assert!(!out.contains("xmlns='jabber:client'"));
        assert!(out.contains("xml:lang='en'"));
        assert!(out.contains("<x xmlns='urn:x' y='&quot;'/>"));
        let again: Element = format!("<r xmlns='jabber:client'>{out}</r>")
            .parse()
            .unwrap();
        assert_eq!(again.children().next(), Some(&el));
        let with_ns = to_string(&el, "jabber:server");
        assert!(with_ns.contains("xmlns='jabber:client'"));
    }
}
