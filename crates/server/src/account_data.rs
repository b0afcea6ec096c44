//! Portable account data: each module exports and imports its own part of
//! an account, as the child elements of a XEP-0227 `<user/>`.
//!
//! A module that keeps data about accounts implements [`AccountData`] and
//! registers it with [`HostSetup::account_data`](crate::module::HostSetup::account_data).
//! The command layer (`palaver-admin`) then exports an account by asking every
//! registered part of the host for its elements, and imports one in three
//! steps: [`read`](AccountData::read) each `<user/>` child a part claims
//! (no storage: the whole file is checked before anything is written), then
//! [`clear`](AccountData::clear) the data of an account being replaced and
//! [`write`](AccountData::write) what was read. The kernel knows neither the
//! modules' namespaces nor their storage keys; the credentials stay with the
//! kernel's account store.
//!
//! ```ignore
//! struct PrivatePart;
//! impl AccountData for PrivatePart {
//!     type Data = Vec<Element>;
//!     const ELEMENTS: &'static [(&'static str, &'static str)] = &[("query", "jabber:iq:private")];
//!     async fn export(&self, cx: &ModuleCx, a: &Account, t: &mut Tally) -> Result<Vec<Element>, StorageError> { todo!() }
//!     fn read(&self, a: &Account, el: &Element, data: &mut Vec<Element>, t: &mut Tally) -> Result<(), String> { todo!() }
//!     async fn clear(&self, cx: &ModuleCx, a: &Account) -> Result<(), StorageError> { todo!() }
//!     async fn write(&self, cx: &ModuleCx, a: &Account, data: Vec<Element>, t: &mut Tally) -> Result<(), StorageError> { todo!() }
//! }
//! // in Module::start:
//! host.account_data(PrivatePart);
//! ```

use crate::hooks::Account;
use crate::module::ModuleCx;
use futures_util::future::BoxFuture;
use minidom::Element;
use palaver_storage::StorageError;
use std::any::Any;
use std::future::Future;
use std::sync::Arc;

/// Counts by label (`"roster item(s)"`) and notices about data that was
/// skipped or adjusted, gathered while exporting or importing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// `(label, count)` in the order the labels first appeared.
    pub counts: Vec<(&'static str, usize)>,
    /// Notices, one line each (the importer prefixes the element's location).
    pub warnings: Vec<String>,
}

impl Tally {
    /// Add `n` to the count labelled `label` (shown as `N label`).
    pub fn count(&mut self, label: &'static str, n: usize) {
        match self.counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, c)) => *c += n,
            None => self.counts.push((label, n)),
        }
    }

    /// Record a notice.
    pub fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push(msg.into());
    }

    /// Add another tally's counts and notices to this one.
    pub fn merge(&mut self, other: Tally) {
        for (l, n) in other.counts {
            self.count(l, n);
        }
        self.warnings.extend(other.warnings);
    }

    /// The count labelled `label` (0 when absent).
    pub fn get(&self, label: &str) -> usize {
        self.counts
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| *n)
    }

    /// `3 roster item(s), 1 vCard(s)`.
    pub fn summary(&self) -> String {
        self.counts
            .iter()
            .map(|(l, n)| format!("{n} {l}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A module's part of an account's portable data.
pub trait AccountData: Send + Sync + 'static {
    /// What [`read`](Self::read) gathers from a `<user/>` and
    /// [`write`](Self::write) stores.
    type Data: Default + Send + 'static;

    /// The `<user/>` children this part reads, as `(name, namespace)`.
    const ELEMENTS: &'static [(&'static str, &'static str)];

    /// The module's data about `account`, as `<user/>` children. Stored data
    /// that cannot be read is left out with a notice in `tally`.
    fn export(
        &self,
        cx: &ModuleCx,
        account: &Account,
        tally: &mut Tally,
    ) -> impl Future<Output = Result<Vec<Element>, StorageError>> + Send;

    /// Add one claimed `<user/>` child to `data`, without storage. Single
    /// unusable items are notices in `tally`; `Err` refuses the whole file.
    fn read(
        &self,
        account: &Account,
        el: &Element,
        data: &mut Self::Data,
        tally: &mut Tally,
    ) -> Result<(), String>;

    /// Delete the module's data about `account` (before a replacement is
    /// written, or when a new account is rolled back).
    fn clear(
        &self,
        cx: &ModuleCx,
        account: &Account,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Store what [`read`](Self::read) gathered for `account`, counting it in `tally`.
    fn write(
        &self,
        cx: &ModuleCx,
        account: &Account,
        data: Self::Data,
        tally: &mut Tally,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// [`AccountData`] with its data type erased, as the kernel keeps it.
trait ErasedPart: Send + Sync {
    fn export<'a>(
        &'a self,
        cx: &'a ModuleCx,
        account: &'a Account,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<Vec<Element>, StorageError>>;
    fn new_data(&self) -> Box<dyn Any + Send>;
    fn read(
        &self,
        account: &Account,
        el: &Element,
        data: &mut (dyn Any + Send),
        tally: &mut Tally,
    ) -> Result<(), String>;
    fn clear<'a>(
        &'a self,
        cx: &'a ModuleCx,
        account: &'a Account,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
    fn write<'a>(
        &'a self,
        cx: &'a ModuleCx,
        account: &'a Account,
        data: Box<dyn Any + Send>,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
}

impl<T: AccountData> ErasedPart for T {
    fn export<'a>(
        &'a self,
        cx: &'a ModuleCx,
        account: &'a Account,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<Vec<Element>, StorageError>> {
        Box::pin(AccountData::export(self, cx, account, tally))
    }
    fn new_data(&self) -> Box<dyn Any + Send> {
        Box::new(T::Data::default())
    }
    fn read(
        &self,
        account: &Account,
        el: &Element,
        data: &mut (dyn Any + Send),
        tally: &mut Tally,
    ) -> Result<(), String> {
        match data.downcast_mut::<T::Data>() {
            Some(d) => AccountData::read(self, account, el, d, tally),
            None => Err("internal error: account data of another module".into()),
        }
    }
    fn clear<'a>(
        &'a self,
        cx: &'a ModuleCx,
        account: &'a Account,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(AccountData::clear(self, cx, account))
    }
    fn write<'a>(
        &'a self,
        cx: &'a ModuleCx,
        account: &'a Account,
        data: Box<dyn Any + Send>,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        match data.downcast::<T::Data>() {
            Ok(d) => Box::pin(AccountData::write(self, cx, account, *d, tally)),
            Err(_) => Box::pin(async {
                Err(StorageError::Backend(
                    "internal error: account data of another module".into(),
                ))
            }),
        }
    }
}

/// One module's registered [`AccountData`] on a host.
#[derive(Clone)]
pub struct AccountDataPart {
    module: &'static str,
    elements: &'static [(&'static str, &'static str)],
    imp: Arc<dyn ErasedPart>,
}

impl AccountDataPart {
    pub(crate) fn new<T: AccountData>(module: &'static str, part: T) -> Self {
        AccountDataPart {
            module,
            elements: T::ELEMENTS,
            imp: Arc::new(part),
        }
    }

    /// The module that registered it.
    pub fn module(&self) -> &'static str {
        self.module
    }

    /// The `<user/>` children it reads, `(name, namespace)`.
    pub fn elements(&self) -> &'static [(&'static str, &'static str)] {
        self.elements
    }

    /// Whether it reads `el`.
    pub fn claims(&self, el: &Element) -> bool {
        self.elements.iter().any(|(n, ns)| el.is(*n, *ns))
    }

    /// The module's data about `account` as `<user/>` children.
    pub async fn export(
        &self,
        cx: &ModuleCx,
        account: &Account,
        tally: &mut Tally,
    ) -> Result<Vec<Element>, StorageError> {
        self.imp.export(cx, account, tally).await
    }

    /// Empty data for [`PartData::read`].
    pub fn start_import(&self) -> PartData {
        PartData {
            part: self.clone(),
            data: self.imp.new_data(),
        }
    }

    /// Delete the module's data about `account`.
    pub async fn clear(&self, cx: &ModuleCx, account: &Account) -> Result<(), StorageError> {
        self.imp.clear(cx, account).await
    }
}

impl std::fmt::Debug for AccountDataPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountDataPart")
            .field("module", &self.module)
            .field("elements", &self.elements)
            .finish()
    }
}

/// What one part read of one `<user/>`, waiting to be written.
pub struct PartData {
    part: AccountDataPart,
    data: Box<dyn Any + Send>,
}

impl PartData {
    /// The part it belongs to.
    pub fn part(&self) -> &AccountDataPart {
        &self.part
    }

    /// Read one claimed `<user/>` child.
    pub fn read(
        &mut self,
        account: &Account,
        el: &Element,
        tally: &mut Tally,
    ) -> Result<(), String> {
        self.part.imp.read(account, el, &mut *self.data, tally)
    }

    /// Store it.
    pub async fn write(
        self,
        cx: &ModuleCx,
        account: &Account,
        tally: &mut Tally,
    ) -> Result<(), StorageError> {
        self.part.imp.write(cx, account, self.data, tally).await
    }
}

impl std::fmt::Debug for PartData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartData")
            .field("module", &self.part.module)
            .finish()
    }
}

/// `<name xmlns='ns'/>` (or `<name/> (no namespace)`), for notices.
pub fn describe(el: &Element) -> String {
    let ns = el.ns();
    if ns.is_empty() {
        format!("<{}/> (no namespace)", el.name())
    } else {
        format!("<{} xmlns='{}'/>", el.name(), ns)
    }
}
