//! Chat rooms as the command layer sees them: the MUC module registers a
//! [`RoomAdmin`] on its host ([`crate::HostSetup::room_admin`]), and the
//! room commands (`create_room`, `destroy_room`, `muc_online_rooms`,
//! `get_room_occupants`, `get_room_options`, `change_room_option`) reach
//! the live rooms through it, never by importing the module.

use crate::module::ModuleCx;
use futures_util::future::BoxFuture;

/// Why a room operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomAdminError {
    /// No room of that name on the service.
    #[error("{0}")]
    NoRoom(String),
    /// The room exists already.
    #[error("{0}")]
    Exists(String),
    /// A bad room name, option or value (the sentence says which).
    #[error("{0}")]
    Invalid(String),
    /// The service cannot do it now (rooms still loading, storage failed).
    #[error("{0}")]
    Unavailable(String),
}

/// One occupant session of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomOccupant {
    /// The occupant's real (full) JID.
    pub jid: String,
    /// Nickname in the room.
    pub nick: String,
    /// XEP-0045 role (`moderator`, `participant`, `visitor`).
    pub role: String,
}

/// Administration of the rooms of one host's MUC services.
pub trait RoomAdmin: Send + Sync {
    /// The service domains (e.g. `conference.example.org`), in config order.
    fn services(&self) -> Vec<String>;
    /// The bare JIDs of the rooms that exist on `service` now, sorted.
    fn rooms(&self, service: &str) -> Result<Vec<String>, RoomAdminError>;
    /// Create room `name` on `service` with the service's default room
    /// options, open at once (not locked); returns its JID. A persistent
    /// room is stored before this returns; a temporary one stays until
    /// its last occupant leaves.
    fn create(
        &self,
        cx: ModuleCx,
        service: String,
        name: String,
    ) -> BoxFuture<'static, Result<String, RoomAdminError>>;
    /// Destroy a room: its occupants are told (XEP-0045 §10.9) and leave,
    /// and the stored room and its archive are removed.
    fn destroy(
        &self,
        cx: ModuleCx,
        service: String,
        name: String,
    ) -> BoxFuture<'static, Result<(), RoomAdminError>>;
    /// The occupant sessions of a room, by nickname.
    fn occupants(&self, service: &str, name: &str) -> Result<Vec<RoomOccupant>, RoomAdminError>;
    /// A room's options with ejabberd's names (`default_room_options`),
    /// values as text, sorted by name.
    fn options(&self, service: &str, name: &str) -> Result<Vec<(String, String)>, RoomAdminError>;
    /// Change one option (ejabberd's name; booleans `true`/`false`); the
    /// occupants see the change as an owner's reconfiguration would show
    /// it, and a persistent room is stored before this returns.
    fn set_option(
        &self,
        cx: ModuleCx,
        service: String,
        name: String,
        option: String,
        value: String,
    ) -> BoxFuture<'static, Result<(), RoomAdminError>>;
}
