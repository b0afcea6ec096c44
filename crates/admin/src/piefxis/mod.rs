//! XEP-0227 "Portable Import/Export Format" (PIEFXIS, namespace
//! `urn:xmpp:pie:0`, version 1.1 with its SCRAM credentials extension
//! `urn:xmpp:pie:0#scram`).
//!
//! * [`read`]: [`read_file`] parses a file (following `xi:include`
//!   references) into a [`Document`], checking the structure and the
//!   credentials before anything is written: broken XML, a wrong root
//!   namespace, a missing attribute or unusable credentials are errors with
//!   `FILE:LINE:COLUMN`.
//! * [`model`]: the [`Document`]. Credentials belong to the command layer;
//!   every other child of a `<user/>` is kept as an element for the module
//!   that owns it.
//! * [`import`](mod@import): on a core whose modules are started, each
//!   module's [`AccountData`](palaver_server::account_data::AccountData)
//!   part reads the elements it claims (unusable items and data no module
//!   takes are located warnings; an unusable element is a located error),
//!   then every account is written, one at a time (a failed account is
//!   rolled back and named).
//! * [`export`](mod@export): each account's credentials, then every module
//!   part's elements; [`write`](mod@write): [`to_xml`].
//!
//! What the modules of this build carry, both ways: roster items
//! (`jabber:iq:roster`, with `ask`, `approved`, groups) and pending inbound
//! subscription requests (`jabber:client` presence) — mod_roster; the vCard
//! (`vcard-temp`) — mod_vcard; private XML (`jabber:iq:private`) —
//! mod_private; offline messages (`<offline-messages>` with XEP-0203
//! `<delay/>`) — mod_offline; the block list (`urn:xmpp:blocking`, an
//! extension other servers ignore) — mod_blocking. A module that is not
//! enabled on a host neither exports nor imports its part there.
//!
//! Import also understands what other servers write: the pre-1.0 namespace
//! `http://www.xmpp.org/extensions/xep-0227.html#ns`, ejabberd's
//! `password='scram:StoredKey,ServerKey,Salt,IterationCount'` (SCRAM-SHA-1)
//! and SCRAM values that are base64-encoded twice (ejabberd 23.01).

mod credentials;
pub mod export;
pub mod import;
pub mod model;
pub mod read;
pub mod write;

pub use export::{ExportReport, export_host};
pub use import::{ImportOptions, ImportReport, import};
pub use model::{Document, HostData, Item, Location, UserData};
pub use read::{Parsed, parse_bytes, read_file};
pub use write::to_xml;

use palaver_storage::StorageError;

/// XEP-0227 namespace.
pub const NS_PIE: &str = "urn:xmpp:pie:0";
/// Namespace of XEP-0227 before version 1.0 (still read).
pub const NS_PIE_DRAFT: &str = "http://www.xmpp.org/extensions/xep-0227.html#ns";
/// XEP-0227 SCRAM credentials.
pub const NS_SCRAM: &str = "urn:xmpp:pie:0#scram";
/// XInclude.
pub const NS_XINCLUDE: &str = "http://www.w3.org/2001/XInclude";

/// Why an import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum PieError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a usable XEP-0227 document.
    #[error("{at}: {msg}")]
    Invalid {
        /// Where.
        at: Location,
        /// What.
        msg: String,
    },
    /// Unusable data in a document that was not read from a file.
    #[error("{0}")]
    Unusable(String),
    /// Export of a host this configuration does not serve.
    #[error("host `{host}` is not served by this configuration (hosts: {served})")]
    UnknownHost {
        /// The host asked for.
        host: String,
        /// The configured hosts.
        served: String,
    },
    /// Accounts of the file exist already and replacing was not asked for.
    #[error(
        "{} account(s) of the file already exist: {}; nothing was imported (replace them with --force)",
        .accounts.len(),
        .accounts.join(", ")
    )]
    Exists {
        /// `user@host` of each.
        accounts: Vec<String>,
    },
    /// A storage call failed.
    #[error("storage error while {doing}: {source}")]
    Storage {
        /// What was being done.
        doing: String,
        /// The backend error.
        source: StorageError,
    },
    /// The import stopped at one account; the accounts before it were imported.
    #[error(
        "importing {failed} failed ({cause}); {} account(s) before it were imported{}{}",
        .imported.len(),
        if .imported.is_empty() { "" } else { ": " },
        .imported.join(", ")
    )]
    Partial {
        /// `user@host` imported completely.
        imported: Vec<String>,
        /// `user@host` that failed (rolled back when it was new).
        failed: String,
        /// Why.
        cause: Box<PieError>,
    },
}

pub(crate) fn storage_err(doing: impl Into<String>) -> impl FnOnce(StorageError) -> PieError {
    let doing = doing.into();
    move |source| PieError::Storage { doing, source }
}
