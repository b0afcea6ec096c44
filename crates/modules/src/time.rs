//! XEP-0202: Entity Time of the server (always reported in UTC).

use minidom::Element;
use palaver_proto::ns;
use palaver_server::{HostSetup, Module, ModuleDef, NoOptions};

/// `mod_time`.
pub struct Time;

/// `mod_time` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Time>();

impl Module for Time {
    const NAME: &'static str = "mod_time";
    type Options = NoOptions;
    fn start(host: &mut HostSetup, _: NoOptions) -> Result<Self, String> {
        start(host)?;
        Ok(Time)
    }
}

fn start(host: &mut HostSetup) -> Result<(), String> {
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
