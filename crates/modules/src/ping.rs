//! XEP-0199: XMPP Ping — the server answers pings addressed to it (and to
//! its users' bare JIDs, on their behalf).

use palaver_proto::ns;
use palaver_server::{HostSetup, IqScope, IqType, Module, ModuleDef, NoOptions};

/// `mod_ping`.
pub struct Ping;

/// `mod_ping` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Ping>();

impl Module for Ping {
    const NAME: &'static str = "mod_ping";
    type Options = NoOptions;

    fn start(host: &mut HostSetup, _: NoOptions) -> Result<Self, String> {
        host.add_feature(ns::PING);
        for scope in [IqScope::Server, IqScope::Account] {
            host.on_iq(scope, IqType::Get, ns::PING, |_req| async { Ok(None) });
        }
        Ok(Ping)
    }
}
