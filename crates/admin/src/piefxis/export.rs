//! Export: one host's accounts, their credentials and every module part's
//! elements.

use super::model::{Document, HostData, Item, UserData};
use super::{PieError, storage_err};
use palaver_proto::sasl::ScramHash;
use palaver_server::Core;
use palaver_server::account_data::Tally;
use palaver_server::hooks::Account;
use std::sync::Arc;

/// What an export contains.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Accounts.
    pub accounts: usize,
    /// Counts by the modules' labels, and stored data left out.
    pub tally: Tally,
}

/// Read every account of `host`: its credentials, then what each module
/// enabled on the host exports of it.
pub async fn export_host(
    core: &Arc<Core>,
    host: &str,
) -> Result<(Document, ExportReport), PieError> {
    let cx = core.cx_of(host).ok_or_else(|| PieError::UnknownHost {
        host: host.to_string(),
        served: core.config().hosts.join(", "),
    })?;
    let storage = core.storage();
    let mut rep = ExportReport::default();
    let mut users = Vec::new();
    let names = storage
        .accounts
        .list_accounts(host)
        .await
        .map_err(storage_err(format!("listing the accounts of {host}")))?;
    for name in names {
        let account = Account::new(host, name.clone());
        let jid = account.jid();
        let mut u = UserData {
            name: name.clone(),
            ..UserData::default()
        };
        for hash in ScramHash::ALL {
            if let Some(c) = storage
                .accounts
                .credentials(host, &name, hash)
                .await
                .map_err(storage_err(format!("reading the credentials of {jid}")))?
            {
                u.scram.push(c);
            }
        }
        if u.scram.is_empty() {
            rep.tally.warn(format!(
                "{jid} has no credentials; it is exported without any"
            ));
        }
        for part in cx.host().account_data() {
            let els = part
                .export(&cx, &account, &mut rep.tally)
                .await
                .map_err(storage_err(format!(
                    "reading the {} data of {jid}",
                    part.module()
                )))?;
            u.data
                .extend(els.into_iter().map(|el| Item { el, at: None }));
        }
        rep.accounts += 1;
        users.push(u);
    }
    Ok((
        Document {
            hosts: vec![HostData {
                jid: host.to_string(),
                users,
                at: None,
            }],
        },
        rep,
    ))
}
