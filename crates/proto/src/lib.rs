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
