//! A room's configuration: ejabberd's `default_room_options` names, the
//! `muc#roomconfig` form (XEP-0045 §10.2) built from it and applied to it.

use palaver_proto::forms::{DataForm, Field, FieldType, FormType};
use serde::{Deserialize, Serialize};

/// Who may send private messages in a room (ejabberd's `allowpm`).
pub const ALLOWPM: [&str; 4] = ["anyone", "participants", "moderators", "none"];

/// A room's options (also `default_room_options` of `mod_muc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomConfig {
    pub title: String,
    pub description: String,
    pub allow_change_subj: bool,
    pub allow_query_users: bool,
    pub allow_user_invites: bool,
    pub allow_visitor_nickchange: bool,
    pub allow_visitor_status: bool,
    pub allow_voice_requests: bool,
    /// Semi-anonymous: real JIDs only for moderators.
    pub anonymous: bool,
    pub lang: String,
    /// XEP-0313 archive of the room (and status codes 170).
    pub logging: bool,
    pub mam: bool,
    pub max_users: u32,
    pub members_by_default: bool,
    pub members_only: bool,
    pub moderated: bool,
    pub password: String,
    pub password_protected: bool,
    pub persistent: bool,
    pub public: bool,
    pub public_list: bool,
    pub allowpm: String,
    pub voice_request_min_interval: u32,
    /// Occupants who registered a nickname with the room (XEP-0045 §7.10)
    /// must use it: joining or changing to another is `not-acceptable`.
    pub enforce_reserved_nick: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            title: String::new(),
            description: String::new(),
            allow_change_subj: true,
            allow_query_users: true,
            allow_user_invites: false,
            allow_visitor_nickchange: true,
            allow_visitor_status: true,
            allow_voice_requests: true,
            anonymous: true,
            lang: String::new(),
            logging: false,
            mam: false,
            max_users: 200,
            members_by_default: true,
            members_only: false,
            moderated: true,
            password: String::new(),
            password_protected: false,
            persistent: false,
            public: true,
            public_list: true,
            allowpm: "anyone".into(),
            voice_request_min_interval: 1800,
            enforce_reserved_nick: false,
        }
    }
}

/// ejabberd `default_room_options` keys Palaver reads but does not act on.
pub const IGNORED_EJABBERD_KEYS: &[&str] = &[
    "allow_subscription",
    "captcha_protected",
    "presence_broadcast",
    "pubsub",
    "enable_hats",
    "allow_private_messages",
    "allow_private_messages_from_visitors",
    "vcard_xupdate",
];

pub const NS_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";

/// The service's caps on what a room's owner may set (`max_users`,
/// `max_room_name`, `max_room_desc`, `max_password`).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_users: u32,
    pub max_name: usize,
    pub max_desc: usize,
    pub max_password: usize,
}

impl Caps {
    /// Only `max_users` capped.
    pub fn users(max_users: u32) -> Caps {
        Caps {
            max_users,
            max_name: usize::MAX,
            max_desc: usize::MAX,
            max_password: usize::MAX,
        }
    }
}

/// What applying a submitted form changed, for the status codes of §10.2.1.
#[derive(Default, Debug)]
pub struct Applied {
    pub owners: Option<Vec<String>>,
    pub admins: Option<Vec<String>>,
}

impl RoomConfig {
    /// The `muc#roomconfig` form with the current values.
    pub fn to_form(&self, owners: Vec<String>, admins: Vec<String>, max_users: u32) -> DataForm {
        let bool_field = |var: &str, label: &str, v: bool| Field::boolean(var, v).label(label);
        let mut sizes: Vec<u32> = [5u32, 10, 20, 30, 50, 100, 200, 500, 1000]
            .into_iter()
            .filter(|n| *n <= max_users)
            .collect();
        if !sizes.contains(&self.max_users) {
            sizes.push(self.max_users);
        }
        sizes.sort_unstable();
        DataForm::with_form_type(FormType::Form, NS_ROOMCONFIG)
            .title("Room configuration")
            .field(Field::text("muc#roomconfig_roomname", &self.title).label("Room title"))
            .field(
                Field::new(
                    "muc#roomconfig_roomdesc",
                    FieldType::TextSingle,
                    vec![self.description.clone()],
                )
                .label("Room description"),
            )
            .field(Field::text("muc#roomconfig_lang", &self.lang).label("Natural language"))
            .field(bool_field(
                "muc#roomconfig_persistentroom",
                "Make room persistent",
                self.persistent,
            ))
            .field(bool_field(
                "muc#roomconfig_publicroom",
                "Make room public searchable",
                self.public,
            ))
            .field(bool_field(
                "public_list",
                "Make participants list public",
                self.public_list,
            ))
            .field(bool_field(
                "muc#roomconfig_passwordprotectedroom",
                "Make room password protected",
                self.password_protected,
            ))
            .field(
                Field::new(
                    "muc#roomconfig_roomsecret",
                    FieldType::TextPrivate,
                    vec![self.password.clone()],
                )
                .label("Password"),
            )
            .field(
                Field::new(
                    "muc#roomconfig_maxusers",
                    FieldType::ListSingle,
                    vec![self.max_users.to_string()],
                )
                .label("Maximum number of occupants")
                .options(sizes.iter().map(|n| (n.to_string(), n.to_string()))),
            )
            .field(
                Field::new(
                    "muc#roomconfig_whois",
                    FieldType::ListSingle,
                    vec![
                        if self.anonymous {
                            "moderators"
                        } else {
                            "anyone"
                        }
                        .into(),
                    ],
                )
                .label("Present real Jabber IDs to")
                .options([("moderators only", "moderators"), ("anyone", "anyone")]),
            )
            .field(bool_field(
                "muc#roomconfig_membersonly",
                "Make room members-only",
                self.members_only,
            ))
            .field(bool_field(
                "muc#roomconfig_moderatedroom",
                "Make room moderated",
                self.moderated,
            ))
            .field(bool_field(
                "members_by_default",
                "Default users as participants",
                self.members_by_default,
            ))
            .field(bool_field(
                "muc#roomconfig_changesubject",
                "Allow users to change the subject",
                self.allow_change_subj,
            ))
            .field(
                Field::new(
                    "muc#roomconfig_allowpm",
                    FieldType::ListSingle,
                    vec![self.allowpm.clone()],
                )
                .label("Allow users to send private messages")
                .options(ALLOWPM.map(|v| (v, v))),
            )
            .field(bool_field(
                "allow_query_users",
                "Allow users to query other users",
                self.allow_query_users,
            ))
            .field(bool_field(
                "muc#roomconfig_allowinvites",
                "Allow users to send invites",
                self.allow_user_invites,
            ))
            .field(bool_field(
                "allow_visitor_status",
                "Allow visitors to send status text in presence updates",
                self.allow_visitor_status,
            ))
            .field(bool_field(
                "allow_visitor_nickchange",
                "Allow visitors to change nickname",
                self.allow_visitor_nickchange,
            ))
            .field(bool_field(
                "muc#roomconfig_allowvoicerequests",
                "Allow visitors to send voice requests",
                self.allow_voice_requests,
            ))
            .field(
                Field::new(
                    "muc#roomconfig_voicerequestmininterval",
                    FieldType::TextSingle,
                    vec![self.voice_request_min_interval.to_string()],
                )
                .label("Minimum interval between voice requests (in seconds)"),
            )
            .field(bool_field(
                "muc#roomconfig_enablelogging",
                "Enable logging",
                self.logging,
            ))
            .field(bool_field("mam", "Enable message archiving", self.mam))
            .field(bool_field(
                "enforce_reserved_nick",
                "Occupants with a registered nickname must use it",
                self.enforce_reserved_nick,
            ))
            .field(
                Field::new("muc#roomconfig_roomowners", FieldType::JidMulti, owners)
                    .label("Room owners"),
            )
            .field(
                Field::new("muc#roomconfig_roomadmins", FieldType::JidMulti, admins)
                    .label("Room administrators"),
            )
    }

    /// Apply a submitted form (fields left out keep their values). `Err`
    /// names the field whose value is refused (answer `not-acceptable`).
    pub fn apply(&mut self, form: &DataForm, caps: Caps) -> Result<Applied, String> {
        let max_users = caps.max_users;
        let mut c = self.clone();
        let boolean = |var: &str, into: &mut bool| -> Result<(), String> {
            match form.boolean(var) {
                Ok(Some(v)) => *into = v,
                Ok(None) => {}
                Err(_) => return Err(var.to_string()),
            }
            Ok(())
        };
        if let Some(v) = form.value("muc#roomconfig_roomname") {
            c.title = v.to_string();
        }
        if form.get("muc#roomconfig_roomdesc").is_some() {
            c.description = form.values("muc#roomconfig_roomdesc").join("\n");
        }
        if let Some(v) = form.value("muc#roomconfig_lang") {
            c.lang = v.to_string();
        }
        boolean("muc#roomconfig_persistentroom", &mut c.persistent)?;
        boolean("muc#roomconfig_publicroom", &mut c.public)?;
        boolean("public_list", &mut c.public_list)?;
        boolean(
            "muc#roomconfig_passwordprotectedroom",
            &mut c.password_protected,
        )?;
        if form.get("muc#roomconfig_roomsecret").is_some() {
            c.password = form
                .value("muc#roomconfig_roomsecret")
                .unwrap_or("")
                .to_string();
        }
        if let Some(v) = form.value("muc#roomconfig_maxusers") {
            let n = if v == "none" {
                max_users
            } else {
                v.parse::<u32>()
                    .map_err(|_| "muc#roomconfig_maxusers".to_string())?
            };
            if n == 0 || n > max_users {
                return Err("muc#roomconfig_maxusers".into());
            }
            c.max_users = n;
        }
        match form.value("muc#roomconfig_whois") {
            Some("moderators") => c.anonymous = true,
            Some("anyone") => c.anonymous = false,
            Some(_) => return Err("muc#roomconfig_whois".into()),
            None => {}
        }
        boolean("muc#roomconfig_membersonly", &mut c.members_only)?;
        boolean("muc#roomconfig_moderatedroom", &mut c.moderated)?;
        boolean("members_by_default", &mut c.members_by_default)?;
        boolean("muc#roomconfig_changesubject", &mut c.allow_change_subj)?;
        if let Some(v) = form.value("muc#roomconfig_allowpm") {
            if !ALLOWPM.contains(&v) {
                return Err("muc#roomconfig_allowpm".into());
            }
            c.allowpm = v.to_string();
        }
        boolean("allow_query_users", &mut c.allow_query_users)?;
        boolean("muc#roomconfig_allowinvites", &mut c.allow_user_invites)?;
        boolean("allow_visitor_status", &mut c.allow_visitor_status)?;
        boolean("allow_visitor_nickchange", &mut c.allow_visitor_nickchange)?;
        boolean(
            "muc#roomconfig_allowvoicerequests",
            &mut c.allow_voice_requests,
        )?;
        if let Some(v) = form.value("muc#roomconfig_voicerequestmininterval") {
            c.voice_request_min_interval = v
                .parse()
                .map_err(|_| "muc#roomconfig_voicerequestmininterval".to_string())?;
        }
        boolean("muc#roomconfig_enablelogging", &mut c.logging)?;
        boolean("mam", &mut c.mam)?;
        boolean("enforce_reserved_nick", &mut c.enforce_reserved_nick)?;
        if c.title.chars().count() > caps.max_name {
            return Err("muc#roomconfig_roomname".into());
        }
        if c.description.chars().count() > caps.max_desc {
            return Err("muc#roomconfig_roomdesc".into());
        }
        if c.password.chars().count() > caps.max_password {
            return Err("muc#roomconfig_roomsecret".into());
        }
        if c.password_protected && c.password.is_empty() {
            return Err("muc#roomconfig_roomsecret".into());
        }
        let jids = |var: &str| -> Result<Option<Vec<String>>, String> {
            if form.get(var).is_none() {
                return Ok(None);
            }
            let mut out = Vec::new();
            for v in form.values(var) {
                let j = jid::BareJid::new(v.trim()).map_err(|_| var.to_string())?;
                out.push(j.to_string());
            }
            Ok(Some(out))
        };
        let applied = Applied {
            owners: jids("muc#roomconfig_roomowners")?,
            admins: jids("muc#roomconfig_roomadmins")?,
        };
        *self = c;
        Ok(applied)
    }

    /// The room's disco#info features (XEP-0045 §15.2).
    pub fn features(&self) -> Vec<&'static str> {
        vec![
            if self.public {
                "muc_public"
            } else {
                "muc_hidden"
            },
            if self.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if self.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if self.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if self.anonymous {
                "muc_semianonymous"
            } else {
                "muc_nonanonymous"
            },
            if self.password_protected {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip_and_refusals() {
        let c = RoomConfig::default();
        let form = c.to_form(vec!["a@x".into()], vec![], 200);
        let mut submitted = form.clone();
        submitted.kind = FormType::Submit;
        submitted.set(
            "muc#roomconfig_membersonly",
            FieldType::Boolean,
            vec!["true".into()],
        );
        submitted.set(
            "muc#roomconfig_whois",
            FieldType::ListSingle,
            vec!["anyone".into()],
        );
        let mut c2 = c.clone();
        let a = c2.apply(&submitted, Caps::users(200)).expect("applies");
        assert!(c2.members_only && !c2.anonymous);
        assert_eq!(a.owners, Some(vec!["a@x".to_string()]));
        // A refused value leaves the room as it was.
        let mut bad = submitted.clone();
        bad.set(
            "muc#roomconfig_maxusers",
            FieldType::ListSingle,
            vec!["5000".into()],
        );
        let mut c3 = c.clone();
        assert_eq!(
            c3.apply(&bad, Caps::users(200)).err().as_deref(),
            Some("muc#roomconfig_maxusers")
        );
        assert_eq!(c3, c);
        let mut pw = submitted;
        pw.set(
            "muc#roomconfig_passwordprotectedroom",
            FieldType::Boolean,
            vec!["1".into()],
        );
        pw.set("muc#roomconfig_roomsecret", FieldType::TextPrivate, vec![]);
        assert!(c3.apply(&pw, Caps::users(200)).is_err());
        let mut long = DataForm::new(FormType::Submit);
        long.set(
            "muc#roomconfig_roomname",
            FieldType::TextSingle,
            vec!["abcdef".into()],
        );
        let caps = Caps {
            max_name: 5,
            ..Caps::users(200)
        };
        assert_eq!(
            c3.apply(&long, caps).err().as_deref(),
            Some("muc#roomconfig_roomname")
        );
    }
}
