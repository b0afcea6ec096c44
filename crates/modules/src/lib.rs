//! Feature modules of Palaver. Each is a [`ModuleDef`]: a name and a
//! function registering the module's handlers on a virtual host.

pub mod announce;
pub mod auth_fast;
pub mod blocking;
pub mod carboncopy;
pub mod client_state;
pub mod disco;
pub mod fail2ban;
pub mod http_upload;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod ping;
pub mod private;
pub mod pubsub;
pub mod push;
pub mod register;
pub mod roster;
pub mod stream_mgmt;
pub mod time;
pub mod vcard;
pub mod version;

use palaver_server::ModuleDef;

/// Every module this build knows, by config name.
pub fn registry() -> Vec<ModuleDef> {
    vec![
        disco::MODULE,
        ping::MODULE,
        version::MODULE,
        time::MODULE,
        roster::MODULE,
        http_upload::MODULE,
        offline::MODULE,
        vcard::MODULE,
        private::MODULE,
        last::MODULE,
        blocking::MODULE,
        register::MODULE,
        announce::MODULE,
        stream_mgmt::MODULE,
        fail2ban::MODULE,
        carboncopy::MODULE,
        mam::MODULE,
        client_state::MODULE,
        push::MODULE,
        auth_fast::MODULE,
        muc::MODULE,
        pubsub::MODULE,
    ]
}
