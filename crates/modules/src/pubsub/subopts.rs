//! Subscription options (XEP-0060 §6.3, the `pubsub#subscribe_options`
//! form): delivery on/off, digests, a message body with notifications,
//! delivery only for some presence states, and expiry (at a time or when
//! the subscriber goes offline). `pubsub#deliver` has its own column; the
//! rest is stored as JSON beside it.

use palaver_proto::forms::{DataForm, Field, FieldType, FormType};
use serde::{Deserialize, Serialize};

/// `pubsub#subscribe_options`.
pub const SUBSCRIBE_OPTIONS: &str = "http://jabber.org/protocol/pubsub#subscribe_options";
/// The presence states of `pubsub#show-values`.
pub const SHOWS: [&str; 5] = ["away", "chat", "dnd", "online", "xa"];
/// Digest frequency when none is given: a day, in milliseconds.
pub const DEFAULT_DIGEST_MS: u64 = 86_400_000;
/// Shortest digest period accepted (milliseconds).
pub const MIN_DIGEST_MS: u64 = 1_000;
/// Longest digest period accepted (a week, milliseconds).
pub const MAX_DIGEST_MS: u64 = 7 * 86_400_000;

/// When a subscription ends by itself (`pubsub#expire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Expire {
    /// Never.
    #[default]
    Never,
    /// When the subscriber's presence becomes unavailable.
    Presence,
    /// At this time (milliseconds since the epoch).
    At(i64),
}

impl Expire {
    /// The value of the `expire` column: `''`, `presence` or the time.
    pub fn column(self) -> String {
        match self {
            Expire::Never => String::new(),
            Expire::Presence => "presence".into(),
            Expire::At(ms) => ms.to_string(),
        }
    }

    /// Whether the subscription has ended at `now_ms`.
    pub fn passed(self, now_ms: i64) -> bool {
        matches!(self, Expire::At(t) if t <= now_ms)
    }
}

/// The options of one subscription, but `pubsub#deliver`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubOptions {
    /// Notifications gathered and sent together (`pubsub#digest`).
    pub digest: bool,
    /// Least milliseconds between two digests (`pubsub#digest_frequency`).
    pub digest_frequency: u64,
    /// A `<body/>` with each notification (`pubsub#include_body`).
    pub include_body: bool,
    /// Only to sessions whose presence show is one of these
    /// (`pubsub#show-values`); `None`: whatever the presence.
    pub show_values: Option<Vec<String>>,
    /// `pubsub#expire`.
    pub expire: Expire,
}

impl Default for SubOptions {
    fn default() -> Self {
        SubOptions {
            digest: false,
            digest_frequency: DEFAULT_DIGEST_MS,
            include_body: false,
            show_values: None,
            expire: Expire::Never,
        }
    }
}

impl SubOptions {
    /// From the stored JSON (empty or damaged: the defaults).
    pub fn from_json(s: &str) -> SubOptions {
        if s.is_empty() {
            return SubOptions::default();
        }
        serde_json::from_str(s).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "stored subscription options unreadable; defaults used");
            SubOptions::default()
        })
    }

    /// As stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether a session whose presence show is `show` (`online` for none)
    /// gets notifications.
    pub fn wants_show(&self, show: &str) -> bool {
        self.show_values
            .as_ref()
            .is_none_or(|v| v.iter().any(|s| s == show))
    }

    /// The options form with these values (`type='form'`).
    pub fn to_form(&self, deliver: bool) -> DataForm {
        let expire = match self.expire {
            Expire::Never => Vec::new(),
            Expire::Presence => vec!["presence".to_string()],
            Expire::At(ms) => vec![palaver_proto::datetime::format_datetime(ms)],
        };
        DataForm::with_form_type(FormType::Form, SUBSCRIBE_OPTIONS)
            .field(Field::boolean("pubsub#deliver", deliver).label("Enable delivery?"))
            .field(
                Field::boolean("pubsub#digest", self.digest)
                    .label("Receive digest notifications (approx. one per day)?"),
            )
            .field(
                Field::new(
                    "pubsub#digest_frequency",
                    FieldType::TextSingle,
                    vec![self.digest_frequency.to_string()],
                )
                .label("Least milliseconds between two digests"),
            )
            .field(
                Field::boolean("pubsub#include_body", self.include_body)
                    .label("Receive message body in addition to payload?"),
            )
            .field(
                Field::new(
                    "pubsub#show-values",
                    FieldType::ListMulti,
                    self.show_values.clone().unwrap_or_default(),
                )
                .label("Deliver only when my presence is (none: always)")
                .options([
                    ("Away", "away"),
                    ("Want to Chat", "chat"),
                    ("Do Not Disturb", "dnd"),
                    ("Available", "online"),
                    ("Extended Away", "xa"),
                ]),
            )
            .field(
                Field::new("pubsub#expire", FieldType::TextSingle, expire)
                    .label("End the subscription at (a time, or 'presence')"),
            )
    }

    /// A submitted form: `(deliver, options)`, fields left out keeping
    /// `base`'s values. `Err` says what is refused.
    pub fn apply(
        form: &DataForm,
        deliver: bool,
        base: &SubOptions,
    ) -> Result<(bool, SubOptions), String> {
        let mut o = base.clone();
        let mut deliver = deliver;
        for f in &form.fields {
            let Some(var) = f.var.as_deref() else {
                continue;
            };
            let v = f.values.first().map(|s| s.trim()).unwrap_or("");
            let boolean = |v: &str| {
                palaver_proto::forms::parse_bool(v).ok_or_else(|| format!("{var}: not a boolean"))
            };
            match var {
                "FORM_TYPE" => {
                    if v != SUBSCRIBE_OPTIONS {
                        return Err(format!("not a {SUBSCRIBE_OPTIONS} form"));
                    }
                }
                "pubsub#deliver" => deliver = boolean(v)?,
                "pubsub#digest" => o.digest = boolean(v)?,
                "pubsub#digest_frequency" => {
                    let ms: u64 = v
                        .parse()
                        .map_err(|_| format!("{var}: not a number of milliseconds"))?;
                    if !(MIN_DIGEST_MS..=MAX_DIGEST_MS).contains(&ms) {
                        return Err(format!(
                            "{var}: between {MIN_DIGEST_MS} and {MAX_DIGEST_MS} milliseconds"
                        ));
                    }
                    o.digest_frequency = ms;
                }
                "pubsub#include_body" => o.include_body = boolean(v)?,
                "pubsub#show-values" => {
                    let mut shows = Vec::new();
                    for s in &f.values {
                        let s = s.trim();
                        if !SHOWS.contains(&s) {
                            return Err(format!("{var}: unknown presence state {s:?}"));
                        }
                        if !shows.iter().any(|x| x == s) {
                            shows.push(s.to_string());
                        }
                    }
                    o.show_values = (!shows.is_empty()).then_some(shows);
                }
                "pubsub#expire" => {
                    o.expire = match v {
                        "" => Expire::Never,
                        "presence" => Expire::Presence,
                        t => Expire::At(
                            palaver_proto::datetime::parse_datetime(t)
                                .ok_or_else(|| format!("{var}: neither a time nor 'presence'"))?,
                        ),
                    }
                }
                other => return Err(format!("unsupported option {other}")),
            }
        }
        Ok((deliver, o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip_and_refusals() {
        let o = SubOptions {
            digest: true,
            digest_frequency: 5000,
            include_body: true,
            show_values: Some(vec!["chat".into(), "online".into()]),
            expire: Expire::At(1_700_000_000_000),
        };
        let mut form = o.to_form(false);
        form.kind = FormType::Submit;
        let (d, back) = SubOptions::apply(&form, true, &SubOptions::default()).expect("applies");
        assert!(!d);
        assert_eq!(back, o);
        assert!(back.wants_show("chat") && !back.wants_show("dnd"));
        assert!(SubOptions::default().wants_show("xa"));
        assert_eq!(SubOptions::from_json(&o.to_json()), o);
        assert_eq!(SubOptions::from_json(""), SubOptions::default());
        for (var, v) in [
            ("pubsub#show-values", "busy"),
            ("pubsub#digest_frequency", "10"),
            ("pubsub#expire", "tomorrow"),
            ("pubsub#digest", "maybe"),
            ("pubsub#subscription_depth", "1"),
        ] {
            let mut f = DataForm::new(FormType::Submit);
            f.set(var, FieldType::TextSingle, vec![v.into()]);
            assert!(SubOptions::apply(&f, true, &o).is_err(), "{var}={v}");
        }
        let mut f = DataForm::new(FormType::Submit);
        f.set(
            "pubsub#expire",
            FieldType::TextSingle,
            vec!["presence".into()],
        );
        let (_, p) = SubOptions::apply(&f, true, &o).expect("applies");
        assert_eq!(p.expire, Expire::Presence);
        assert_eq!(p.expire.column(), "presence");
        assert!(Expire::At(5).passed(5) && !Expire::At(6).passed(5) && !Expire::Never.passed(9));
    }
}
