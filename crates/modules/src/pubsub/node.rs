//! A node's configuration (XEP-0060 §16.4 `pubsub#node_config`): its
//! stored form (JSON), the configuration form, and publish-options
//! preconditions (§7.1.5).

use palaver_proto::forms::{DataForm, Field, FieldType, FormType};
use serde::{Deserialize, Serialize};

/// `pubsub#node_config`.
pub const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
/// `pubsub#publish-options`.
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// Who may subscribe and retrieve items (§4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessModel {
    /// Anyone.
    Open,
    /// Entities subscribed to the owner's presence.
    Presence,
    /// Contacts in allowed roster groups of the owner.
    Roster,
    /// Affiliated members and owners only.
    Whitelist,
    /// Subscriptions approved by an owner.
    Authorize,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
            AccessModel::Authorize => "authorize",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => AccessModel::Open,
            "presence" => AccessModel::Presence,
            "roster" => AccessModel::Roster,
            "whitelist" => AccessModel::Whitelist,
            "authorize" => AccessModel::Authorize,
            _ => return None,
        })
    }
}

/// Who may publish (§16.4 `pubsub#publish_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishModel {
    /// Owners and publishers.
    Publishers,
    /// Subscribers too.
    Subscribers,
    /// Anyone.
    Open,
}

impl PublishModel {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishModel::Publishers => "publishers",
            PublishModel::Subscribers => "subscribers",
            PublishModel::Open => "open",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "publishers" => PublishModel::Publishers,
            "subscribers" => PublishModel::Subscribers,
            "open" => PublishModel::Open,
            _ => return None,
        })
    }
}

/// When the last published item is sent (`pubsub#send_last_published_item`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
}

/// A node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub title: String,
    pub access_model: AccessModel,
    pub publish_model: PublishModel,
    /// `None`: unbounded (`max`).
    pub max_items: Option<u64>,
    pub persist_items: bool,
    pub deliver_payloads: bool,
    pub deliver_notifications: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub notify_config: bool,
    pub send_last_published_item: SendLast,
    pub roster_groups_allowed: Vec<String>,
    /// `headline` or `normal` (`pubsub#notification_type`).
    pub notification_type: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            title: String::new(),
            access_model: AccessModel::Open,
            publish_model: PublishModel::Publishers,
            max_items: Some(10),
            persist_items: true,
            deliver_payloads: true,
            deliver_notifications: true,
            notify_retract: true,
            notify_delete: true,
            notify_config: false,
            send_last_published_item: SendLast::OnSub,
            roster_groups_allowed: Vec::new(),
            notification_type: "headline".into(),
        }
    }
}

impl NodeConfig {
    /// XEP-0163 §4.4 defaults of a PEP node.
    pub fn pep_default() -> Self {
        NodeConfig {
            access_model: AccessModel::Presence,
            max_items: Some(1),
            send_last_published_item: SendLast::OnSubAndPresence,
            ..NodeConfig::default()
        }
    }

    /// From the stored JSON (a damaged one falls back to `default`).
    pub fn from_json(s: &str, default: &NodeConfig) -> NodeConfig {
        serde_json::from_str(s).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "stored pubsub node configuration unreadable; defaults used");
            default.clone()
        })
    }

    /// As stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    fn max_items_str(&self) -> String {
        self.max_items.map_or("max".into(), |n| n.to_string())
    }

    /// The configuration form (`type='form'` to fill, or `submit` for export).
    pub fn to_form(&self, kind: FormType) -> DataForm {
        let list = |var: &str, v: &str, opts: &[&str]| {
            Field::new(var, FieldType::ListSingle, vec![v.to_string()])
                .options(opts.iter().map(|o| (o.to_string(), o.to_string())))
        };
        DataForm::with_form_type(kind, NODE_CONFIG)
            .field(Field::text("pubsub#title", self.title.clone()))
            .field(list(
                "pubsub#access_model",
                self.access_model.as_str(),
                &["open", "presence", "roster", "whitelist", "authorize"],
            ))
            .field(list(
                "pubsub#publish_model",
                self.publish_model.as_str(),
                &["publishers", "subscribers", "open"],
            ))
            .field(Field::text("pubsub#max_items", self.max_items_str()))
            .field(Field::boolean("pubsub#persist_items", self.persist_items))
            .field(Field::boolean(
                "pubsub#deliver_payloads",
                self.deliver_payloads,
            ))
            .field(Field::boolean(
                "pubsub#deliver_notifications",
                self.deliver_notifications,
            ))
            .field(Field::boolean("pubsub#notify_retract", self.notify_retract))
            .field(Field::boolean("pubsub#notify_delete", self.notify_delete))
            .field(Field::boolean("pubsub#notify_config", self.notify_config))
            .field(list(
                "pubsub#send_last_published_item",
                self.send_last_published_item.as_str(),
                &["never", "on_sub", "on_sub_and_presence"],
            ))
            .field(Field::new(
                "pubsub#roster_groups_allowed",
                FieldType::ListMulti,
                self.roster_groups_allowed.clone(),
            ))
            .field(list(
                "pubsub#notification_type",
                &self.notification_type,
                &["headline", "normal"],
            ))
    }

    /// Apply a submitted configuration (or publish-options) form. Unknown
    /// fields are refused (§8.2.3.5 `not-acceptable`) when `strict`.
    pub fn apply(&mut self, form: &DataForm, strict: bool) -> Result<(), String> {
        for f in &form.fields {
            let Some(var) = f.var.as_deref() else {
                continue;
            };
            let v = f.values.first().map(String::as_str).unwrap_or("");
            let bool_of = |v: &str| {
                palaver_proto::forms::parse_bool(v).ok_or_else(|| format!("{var}: not a boolean"))
            };
            match var {
                "FORM_TYPE" => {}
                "pubsub#title" => self.title = v.to_string(),
                "pubsub#access_model" => {
                    self.access_model = AccessModel::parse(v)
                        .ok_or_else(|| format!("unknown access model {v:?}"))?
                }
                "pubsub#publish_model" => {
                    self.publish_model = PublishModel::parse(v)
                        .ok_or_else(|| format!("unknown publish model {v:?}"))?
                }
                "pubsub#max_items" => {
                    self.max_items = if v == "max" {
                        None
                    } else {
                        Some(
                            v.trim()
                                .parse::<u64>()
                                .map_err(|_| format!("max_items {v:?} is not a number"))?
                                .max(1),
                        )
                    }
                }
                "pubsub#persist_items" => self.persist_items = bool_of(v)?,
                "pubsub#deliver_payloads" => self.deliver_payloads = bool_of(v)?,
                "pubsub#deliver_notifications" => self.deliver_notifications = bool_of(v)?,
                "pubsub#notify_retract" => self.notify_retract = bool_of(v)?,
                "pubsub#notify_delete" => self.notify_delete = bool_of(v)?,
                "pubsub#notify_config" => self.notify_config = bool_of(v)?,
                "pubsub#send_last_published_item" => {
                    self.send_last_published_item =
                        SendLast::parse(v).ok_or_else(|| format!("unknown value {v:?}"))?
                }
                "pubsub#roster_groups_allowed" => self.roster_groups_allowed = f.values.clone(),
                "pubsub#notification_type" => match v {
                    "headline" | "normal" => self.notification_type = v.to_string(),
                    _ => return Err(format!("unknown notification type {v:?}")),
                },
                other if strict => return Err(format!("unsupported option {other}")),
                _ => {}
            }
        }
        Ok(())
    }

    /// §7.1.5: whether every publish option matches this configuration.
    pub fn meets(&self, form: &DataForm) -> Result<bool, String> {
        let mut want = self.clone();
        want.apply(form, true)?;
        Ok(want == *self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip_and_preconditions() {
        let mut c = NodeConfig::pep_default();
        let form = c.to_form(FormType::Submit);
        let mut d = NodeConfig::default();
        d.apply(&form, true).expect("own form applies");
        assert_eq!(c, d);
        let mut opts = DataForm::with_form_type(FormType::Submit, PUBLISH_OPTIONS);
        opts.set(
            "pubsub#access_model",
            FieldType::ListSingle,
            vec!["open".into()],
        );
        assert_eq!(c.meets(&opts), Ok(false));
        c.apply(&opts, true).expect("applies");
        assert_eq!(c.meets(&opts), Ok(true));
        opts.set("pubsub#bogus", FieldType::TextSingle, vec!["1".into()]);
        assert!(c.meets(&opts).is_err());
        let mut bad = DataForm::new(FormType::Submit);
        bad.set("pubsub#max_items", FieldType::TextSingle, vec!["x".into()]);
        assert!(c.apply(&bad, true).is_err());
    }
}
