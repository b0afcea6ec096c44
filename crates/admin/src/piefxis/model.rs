//! The document model: what a XEP-0227 file holds, as Palaver reads and
//! writes it. Credentials are the command layer's own; every other child of
//! a `<user/>` is kept as an element, for the module that owns it.

use minidom::Element;
use palaver_proto::sasl::ScramCredentials;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A place in a file (1-based line and column, in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File as given (or as resolved from an `xi:include`).
    pub file: Arc<Path>,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// The content of a XEP-0227 file.
#[derive(Debug, Clone, Default)]
pub struct Document {
    /// Hosts, in file order.
    pub hosts: Vec<HostData>,
}

/// One `<host/>`.
#[derive(Debug, Clone)]
pub struct HostData {
    /// Domain.
    pub jid: String,
    /// Users, in file order.
    pub users: Vec<UserData>,
    /// Where it was read (none for an export).
    pub at: Option<Location>,
}

/// One `<user/>`.
#[derive(Debug, Clone, Default)]
pub struct UserData {
    /// Localpart (nodeprepped).
    pub name: String,
    /// Plaintext password from the `password` attribute (import only).
    pub password: Option<String>,
    /// SCRAM credentials, one per hash.
    pub scram: Vec<ScramCredentials>,
    /// Every other child (roster, vCard, offline messages…), in file order,
    /// for the modules that own them.
    pub data: Vec<Item>,
    /// Where it was read (none for an export).
    pub at: Option<Location>,
}

/// A child element of a `<user/>` that belongs to a module.
#[derive(Debug, Clone)]
pub struct Item {
    /// The element.
    pub el: Element,
    /// Where it starts (none for an export).
    pub at: Option<Location>,
}
