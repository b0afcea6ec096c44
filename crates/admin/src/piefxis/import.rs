//! Import: check the hosts, let each module read its part of every user
//! (nothing is written while anything is wrong), then write account by
//! account, rolling a failed new account back.

use super::model::{Document, Location, UserData};
use super::{PieError, storage_err};
use palaver_proto::sasl::ScramCredentials;
use palaver_server::account_data::{PartData, Tally, describe};
use palaver_server::hooks::Account;
use palaver_server::{Core, ModuleCx};
use palaver_storage::StorageError;
use std::collections::BTreeSet;
use std::sync::Arc;

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Replace the credentials and every module's data of accounts that
    /// exist already (without it, any existing account stops the import
    /// before anything is written).
    pub force: bool,
}

/// What an import wrote.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// `user@host` created.
    pub created: Vec<String>,
    /// `user@host` that existed and were replaced (`force`).
    pub replaced: Vec<String>,
    /// Accounts whose credentials were derived from a plaintext password.
    pub derived: usize,
    /// Counts by the modules' labels; notices about data that was skipped
    /// (located) or adjusted while writing.
    pub tally: Tally,
}

/// One account, read and checked, ready to be written.
struct Planned {
    account: Account,
    password: Option<String>,
    scram: Vec<ScramCredentials>,
    parts: Vec<PartData>,
}

/// Check the hosts, let the modules read their elements and check the
/// existing accounts, then write every account.
///
/// Nothing is written when a host is not served, an element is unusable or
/// (without `force`) an account exists. A storage failure stops at the
/// failing account, which is rolled back when it was new; the error names
/// it and the accounts imported before it. Sessions of a replaced account
/// are ended (its roster and block list changed under them).
pub async fn import(
    core: &Arc<Core>,
    doc: &Document,
    opts: &ImportOptions,
) -> Result<ImportReport, PieError> {
    let served = &core.config().hosts;
    for h in &doc.hosts {
        if !served.contains(&h.jid) {
            let msg = format!(
                "host `{}` is not served by this configuration (hosts: {}); add it to `hosts` first",
                h.jid,
                served.join(", ")
            );
            return Err(match &h.at {
                Some(at) => PieError::Invalid {
                    at: at.clone(),
                    msg,
                },
                None => PieError::UnknownHost {
                    host: h.jid.clone(),
                    served: served.join(", "),
                },
            });
        }
    }
    let mut rep = ImportReport::default();
    let mut plan = Vec::new();
    for h in &doc.hosts {
        let Some(cx) = core.cx_of(&h.jid) else {
            continue;
        };
        for u in &h.users {
            plan.push(read_user(&cx, u, &mut rep.tally)?);
        }
    }
    let storage = core.storage();
    let mut existing = BTreeSet::new();
    let mut conflicts = Vec::new();
    let accounts: Vec<Account> = plan.iter().map(|p| p.account.clone()).collect();
    for a in accounts {
        let jid = a.jid();
        if storage
            .accounts
            .account_exists(&a.host, &a.user)
            .await
            .map_err(storage_err(format!("checking whether {jid} exists")))?
        {
            existing.insert(jid.clone());
            conflicts.push(jid);
        }
    }
    if !conflicts.is_empty() && !opts.force {
        return Err(PieError::Exists {
            accounts: conflicts,
        });
    }
    let mut done: Vec<String> = Vec::new();
    for p in plan {
        let jid = p.account.jid();
        let replace = existing.contains(&jid);
        let Some(cx) = core.cx_of(&p.account.host) else {
            continue;
        };
        let account = p.account.clone();
        let mut one = Tally::default();
        match write_user(core, &cx, p, replace, &mut one).await {
            Ok(derived) => {
                if derived {
                    rep.derived += 1;
                }
                if replace {
                    rep.replaced.push(jid.clone());
                } else {
                    rep.created.push(jid.clone());
                }
                rep.tally.merge(one);
                done.push(jid);
            }
            Err(e) => {
                let cause = if replace {
                    e
                } else {
                    match rollback(&cx, &account).await {
                        Ok(()) => e,
                        Err(r) => PieError::Storage {
                            doing: format!("{e}; rolling {jid} back also failed"),
                            source: r,
                        },
                    }
                };
                return Err(PieError::Partial {
                    imported: done,
                    failed: jid,
                    cause: Box::new(cause),
                });
            }
        }
    }
    Ok(rep)
}

fn located(at: Option<&Location>, msg: String) -> String {
    match at {
        Some(at) => format!("{at}: {msg}"),
        None => msg,
    }
}

/// Hand each element of `u` to the module part of `cx`'s host that claims it.
fn read_user(cx: &ModuleCx, u: &UserData, tally: &mut Tally) -> Result<Planned, PieError> {
    let host = cx.host();
    let account = Account::new(host.name.clone(), u.name.clone());
    let jid = account.jid();
    let mut parts: Vec<PartData> = host
        .account_data()
        .iter()
        .map(|p| p.start_import())
        .collect();
    for item in &u.data {
        let Some(part) = parts.iter_mut().find(|p| p.part().claims(&item.el)) else {
            tally.warn(located(
                item.at.as_ref(),
                format!(
                    "{jid}: ignored {}: Palaver does not import it (no module enabled on {} takes it)",
                    describe(&item.el),
                    host.name
                ),
            ));
            continue;
        };
        let mut notes = Tally::default();
        let res = part.read(&account, &item.el, &mut notes);
        for w in notes.warnings {
            tally.warn(located(item.at.as_ref(), w));
        }
        if let Err(msg) = res {
            return Err(match &item.at {
                Some(at) => PieError::Invalid {
                    at: at.clone(),
                    msg,
                },
                None => PieError::Unusable(msg),
            });
        }
    }
    Ok(Planned {
        account,
        password: u.password.clone(),
        scram: u.scram.clone(),
        parts,
    })
}

/// Delete what a failed new account left behind.
async fn rollback(cx: &ModuleCx, account: &Account) -> Result<(), StorageError> {
    for part in cx.host().account_data() {
        part.clear(cx, account).await?;
    }
    match cx
        .storage()
        .accounts
        .delete_account(&account.host, &account.user)
        .await
    {
        Ok(()) | Err(StorageError::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Write one account; `true` when its credentials were derived from a
/// plaintext password.
async fn write_user(
    core: &Arc<Core>,
    cx: &ModuleCx,
    p: Planned,
    replace: bool,
    tally: &mut Tally,
) -> Result<bool, PieError> {
    let Planned {
        account,
        password,
        scram,
        parts,
    } = p;
    let jid = account.jid();
    let (host, name) = (account.host.as_str(), account.user.as_str());
    let storage = core.storage();
    let derived = password.is_some();
    let creds = match &password {
        Some(pw) => palaver_server::auth::derive_all(pw, core.config().scram_iterations),
        None => scram,
    };
    if replace {
        storage
            .accounts
            .set_credentials(host, name, &creds)
            .await
            .map_err(storage_err(format!("replacing the credentials of {jid}")))?;
        cx.auth().forget(host, name);
        if let Ok(bare) = palaver_proto::BareJid::new(&jid) {
            core.sessions()
                .kick(&bare, "account data replaced by an import");
        }
        for part in cx.host().account_data() {
            part.clear(cx, &account).await.map_err(storage_err(format!(
                "clearing the {} data of {jid}",
                part.module()
            )))?;
        }
    } else {
        match storage.accounts.create_account(host, name, &creds).await {
            Ok(()) => {}
            Err(StorageError::Conflict) => {
                return Err(PieError::Exists {
                    accounts: vec![jid],
                });
            }
            Err(e) => return Err(storage_err(format!("creating {jid}"))(e)),
        }
    }
    for data in parts {
        let module = data.part().module();
        data.write(cx, &account, tally)
            .await
            .map_err(storage_err(format!("writing the {module} data of {jid}")))?;
    }
    Ok(derived)
}
