//! XEP-0199: XMPP Ping — the server answers pings addressed to it.

use palaver_proto::ns;
use palaver_server::{HostSetup, IqScope, IqType, ModuleDef};

/// `mod_ping`.
pub const MODULE: ModuleDef = ModuleDef {
    name: "mod_ping",
    start,
};

fn start(host: &mut HostSetup, opts: &serde_json::Value) -> Result<(), String> {
    palaver_server::module::parse_options::<Options>(opts)?;
    host.add_feature(ns::PING);
    for scope in [IqScope::Server, IqScope::Account] {
        host.on_iq(scope, IqType::Get, ns::PING, |_req| async { Ok(None) });
    }
    Ok(())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {}
