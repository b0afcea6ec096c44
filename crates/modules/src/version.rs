//! XEP-0092: Software Version of the server.

use minidom::Element;
use palaver_proto::ns;
use palaver_server::{HostSetup, Module, ModuleDef};

/// `mod_version`.
pub struct Version;

/// `mod_version` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Version>();

impl Module for Version {
    const NAME: &'static str = "mod_version";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Version)
    }
}

/// `mod_version` options.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Include the operating system (off by default: it helps attackers).
    #[serde(default)]
    show_os: bool,
}

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    host.add_feature(ns::VERSION);
    let show_os = o.show_os;
    host.on_iq_get(ns::VERSION, move |_req| async move {
        let mut q = Element::builder("query", ns::VERSION)
            .append(Element::builder("name", ns::VERSION).append("Palaver"))
            .append(Element::builder("version", ns::VERSION).append(env!("CARGO_PKG_VERSION")))
            .build();
        if show_os {
            q.append_child(
                Element::builder("os", ns::VERSION)
                    .append(std::env::consts::OS)
                    .build(),
            );
        }
        Ok(Some(q))
    });
    Ok(())
}
