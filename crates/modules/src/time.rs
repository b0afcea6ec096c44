//! XEP-0202: Entity Time of the server (always reported in UTC).

use minidom::Element;
use palaver_proto::ns;
use palaver_server::{HostSetup, ModuleDef};

/// `mod_time`.
pub const MODULE: ModuleDef = ModuleDef {
    name: "mod_time",
    start,
};

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {}

fn start(host: &mut HostSetup, opts: &serde_json::Value) -> Result<(), String> {
    palaver_server::module::parse_options::<Options>(opts)?;
    host.add_feature(ns::TIME);
    host.on_iq_get(ns::TIME, |_req| async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Some(
            Element::builder("time", ns::TIME)
                .append(Element::builder("tzo", ns::TIME).append("+00:00"))
                .append(
                    Element::builder("utc", ns::TIME)
                        .append(format_utc(now.as_secs(), now.subsec_millis())),
                )
                .build(),
        ))
    });
    Ok(())
}

pub use palaver_proto::datetime::format_utc;
