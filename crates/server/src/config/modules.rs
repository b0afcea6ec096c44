//! Matching the configured modules against the modules this build has.
//!
//! - a module Palaver has: its options go to the module; an option the
//!   module refuses as unknown but that ejabberd's module of the same name
//!   has (`mod_vcard: {search: false}`) is dropped with a warning;
//! - a module Palaver lacks but ejabberd (or ejabberd-contrib) has: dropped
//!   with a warning naming it, its options not checked;
//! - any other name: an error.

use super::{Config, ConfigError, ModuleConfig, ejabberd};
use crate::module::{HostSetup, ModuleDef};

/// Why some ejabberd modules need no Palaver module.
fn built_in(name: &str) -> Option<&'static str> {
    Some(match name {
        "mod_bosh" => "BOSH is built in: served at /bosh on every http listener",
        "mod_host_meta" => {
            "XEP-0156 discovery is built in: /.well-known/host-meta on every http listener"
        }
        "mod_caps" => "entity capabilities are handled by the server itself",
        "mod_vcard_xupdate" => "XEP-0153 avatar hashes in presence come with mod_vcard",
        _ => return None,
    })
}

/// `unknown field `x`` in a serde message.
fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

fn ejabberd_option(module: &str, option: &str) -> bool {
    ejabberd::MODULE_OPTIONS
        .iter()
        .find(|(m, _)| *m == module)
        .is_some_and(|(_, opts)| opts.contains(&option))
}

impl Config {
    /// Check every configured module list (global and per host) against
    /// `registry`: drop, with a warning, the modules Palaver lacks and the
    /// ejabberd options its modules do not use; error on names no one has.
    /// Returns the warnings (idempotent: a second call finds nothing to drop).
    pub fn resolve_modules(&mut self, registry: &[ModuleDef]) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let first_host = self.hosts.first().cloned().unwrap_or_default();
        let mut global = std::mem::take(&mut self.modules);
        let r = self.resolve_list(&mut global, &first_host, "modules", registry, &mut warnings);
        self.modules = global;
        r?;
        let hosts: Vec<String> = self.host_options.keys().cloned().collect();
        for h in hosts {
            let mut list = self
                .host_options
                .get_mut(&h)
                .map(|o| std::mem::take(&mut o.modules))
                .unwrap_or_default();
            let r = self.resolve_list(
                &mut list,
                &h,
                &format!("host_config.{h}.modules"),
                registry,
                &mut warnings,
            );
            if let Some(o) = self.host_options.get_mut(&h) {
                o.modules = list;
            }
            r?;
        }
        Ok(warnings)
    }

    fn resolve_list(
        &self,
        list: &mut Vec<ModuleConfig>,
        host: &str,
        scope: &str,
        registry: &[ModuleDef],
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let mut kept = Vec::with_capacity(list.len());
        let config = std::sync::Arc::new(self.clone());
        for mut m in list.drain(..) {
            let key = format!("{scope}.{}", m.name);
            let Some(def) = registry.iter().find(|d| d.name == m.name) else {
                if let Some(why) = built_in(&m.name) {
                    warnings.push(format!("config key `{key}` (line {}): {why}", m.line));
                } else if ejabberd::MODULES.binary_search(&m.name.as_str()).is_ok() {
                    warnings.push(format!(
                        "config key `{key}` (line {}): module `{}` is not available in Palaver: ignored (its options are not checked)",
                        m.line, m.name
                    ));
                } else {
                    let known: Vec<&str> = registry.iter().map(|d| d.name).collect();
                    return Err(ConfigError::at(
                        &key,
                        m.line,
                        format!(
                            "unknown module (neither Palaver's nor ejabberd's); available: {}",
                            known.join(", ")
                        ),
                    ));
                }
                continue;
            };
            // Try the options as the module would read them; drop ejabberd-only ones it refuses.
            for _ in 0..64 {
                if !m.options.is_object() {
                    break;
                }
                let mut setup = HostSetup::new(host, config.clone());
                setup.begin_module(def.name);
                let Err(e) = def.start(&mut setup, &m.options) else {
                    break;
                };
                let Some(field) = unknown_field(&e) else {
                    break;
                };
                if !ejabberd_option(&m.name, &field) {
                    break;
                }
                if let Some(obj) = m.options.as_object_mut() {
                    obj.remove(&field);
                }
                warnings.push(format!(
                    "config key `{key}.{field}` (line {}): ejabberd option not used by Palaver's {}: ignored",
                    m.line, m.name
                ));
            }
            kept.push(m);
        }
        *list = kept;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_field_is_found() {
        assert_eq!(
            super::unknown_field("unknown field `search`, expected `max_size`").as_deref(),
            Some("search")
        );
        assert_eq!(super::unknown_field("invalid type"), None);
    }
}
