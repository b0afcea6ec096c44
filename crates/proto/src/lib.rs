//! Protocol layer of Palaver: JIDs, namespaces, the XML stream framer and
//! serializer, stanza and stream errors, and sans-IO SASL mechanisms.
//!
//! Nothing in this crate performs I/O; it is fed bytes and elements and
//! returns values, so it is unit-tested without sockets.

pub mod datetime;
pub mod error;
pub mod forms;
pub mod framer;
pub mod ns;
pub mod rsm;
pub mod sasl;
pub mod stanza;
pub mod writer;

pub use jid::{BareJid, FullJid, Jid};
pub use minidom::Element;

/// The bare part of a JID's string (`node@domain` of `node@domain/res`),
/// without the copy and checks of `to_bare()`. A domain holds no `/`, so
/// the first one starts the resource.
pub fn bare_part(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}

#[cfg(test)]
mod bare_part_tests {
    use super::*;

    #[test]
    fn the_bare_part_of_a_jid_is_its_bare_jid() {
        for s in ["a@b/c", "a@b/c/d@e", "a@b", "b/r", "b", "b/"] {
            let Ok(j) = s.parse::<Jid>() else { continue };
            assert_eq!(bare_part(j.as_str()), j.to_bare().as_str(), "{s}");
        }
    }
}
