//! XEP-0363 HTTP File Upload: slots on `upload.<host>`, and the signed PUT
//! and GET URLs served by a route this module adds to every HTTP listener.

use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_proto::stanza::set_attr;
use palaver_server::hooks::RemoveUser;
use palaver_server::{HookAction, HostSetup, IqRequest, IqResult, IqType, Module, ModuleDef};
use std::sync::Arc;

mod http;
pub mod store;

pub use store::{Upload, UploadOptions, sanitize_filename, valid_content_type};

/// XEP-0363 namespace.
pub const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";

/// `mod_http_upload`: slots on `upload.HOST`, PUT/GET on every HTTP
/// listener, hourly retention.
pub struct HttpUpload;

/// `mod_http_upload` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<HttpUpload>();

impl Module for HttpUpload {
    const NAME: &'static str = "mod_http_upload";
    type Options = UploadOptions;

    fn start(host: &mut HostSetup, o: UploadOptions) -> Result<Self, String> {
        if o.max_size == 0 {
            return Err("max_size must be positive".into());
        }
        if let Some(b) = &o.base_url
            && !(b.starts_with("http://") || b.starts_with("https://"))
        {
            return Err("base_url must be an http:// or https:// URL".into());
        }
        let domain = o.host.replace("@HOST@", host.host());
        jid::BareJid::new(&domain)
            .ok()
            .filter(|j| j.node().is_none())
            .ok_or_else(|| format!("host: `{domain}` is not a valid domain"))?;
        let max = o.max_size;
        let up = Arc::new(Upload::open(o, host.config().data_dir.join("upload")));
        host.on_service_iq(
            &domain,
            IqType::Get,
            ns::DISCO_INFO,
            move |_req| async move { Ok(Some(info(max))) },
        );
        host.on_service_iq(&domain, IqType::Get, ns::DISCO_ITEMS, |_req| async {
            Ok(Some(Element::bare("query", ns::DISCO_ITEMS)))
        });
        let u = up.clone();
        host.on_service_iq(&domain, IqType::Get, NS_UPLOAD, move |req| {
            slot(u.clone(), req)
        });
        let u = up.clone();
        host.http_route("/upload/{owner}/{slot}/{name}", move |_cx| {
            axum::routing::get(http::get)
                .put(http::put)
                .with_state(u.clone())
        });
        let u = up.clone();
        host.spawn_task(move |_cx| retention(u));
        host.hook_async::<RemoveUser, _>(50, move |_cx, a| {
            let dir = up.dir.join(up.owner_id(&format!("{}@{}", a.user, a.host)));
            async move {
                let _ = tokio::fs::remove_dir_all(dir).await;
                HookAction::Continue
            }
        });
        Ok(HttpUpload)
    }
}

/// Drop expired uploads hourly (ended with the module).
async fn retention(up: Arc<Upload>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let u = up.clone();
        let n = tokio::task::spawn_blocking(move || u.cleanup())
            .await
            .unwrap_or(0);
        if n > 0 {
            tracing::info!(removed = n, "expired uploads removed");
        }
    }
}

fn field(var: &str, value: &str, hidden: bool) -> Element {
    let mut f = Element::bare("field", "jabber:x:data");
    set_attr(&mut f, "var", var);
    if hidden {
        set_attr(&mut f, "type", "hidden");
    }
    f.append_child(
        Element::builder("value", "jabber:x:data")
            .append(value)
            .build(),
    );
    f
}

fn info(max: u64) -> Element {
    let mut q = Element::bare("query", ns::DISCO_INFO);
    let mut id = Element::bare("identity", ns::DISCO_INFO);
    set_attr(&mut id, "category", "store");
    set_attr(&mut id, "type", "file");
    set_attr(&mut id, "name", "HTTP File Upload");
    q.append_child(id);
    for f in [ns::DISCO_INFO, NS_UPLOAD] {
        let mut e = Element::bare("feature", ns::DISCO_INFO);
        set_attr(&mut e, "var", f);
        q.append_child(e);
    }
    let mut x = Element::bare("x", "jabber:x:data");
    set_attr(&mut x, "type", "result");
    x.append_child(field("FORM_TYPE", NS_UPLOAD, true));
    x.append_child(field("max-file-size", &max.to_string(), false));
    q.append_child(x);
    q
}

fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

async fn slot(up: Arc<Upload>, req: IqRequest) -> IqResult {
    // Only accounts of this host may upload.
    let from = req.stanza.from.to_bare();
    if from.node().is_none() || from.domain().as_str() != req.cx.host().name {
        return Err(StanzaError::new(Condition::NotAllowed).text("only local users may upload"));
    }
    let r = req
        .payload()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let filename = r
        .attr("filename")
        .filter(|f| !f.is_empty())
        .ok_or_else(|| StanzaError::new(Condition::BadRequest).text("filename is required"))?;
    let size: u64 = r
        .attr("size")
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| {
            StanzaError::new(Condition::BadRequest).text("size must be a positive integer")
        })?;
    let ct = r
        .attr("content-type")
        .unwrap_or("application/octet-stream")
        .to_string();
    if !valid_content_type(&ct) {
        return Err(StanzaError::new(Condition::BadRequest).text("invalid content-type"));
    }
    if size > up.opts.max_size {
        let too_large = Element::builder("file-too-large", NS_UPLOAD)
            .append(
                Element::builder("max-file-size", NS_UPLOAD).append(up.opts.max_size.to_string()),
            )
            .build();
        return Err(StanzaError::new(Condition::NotAcceptable)
            .text(format!(
                "file too large: the maximum is {} bytes",
                up.opts.max_size
            ))
            .with_extra(too_large));
    }
    let owner = up.owner_id(from.as_str());
    if up.opts.quota > 0 {
        let up2 = up.clone();
        let o2 = owner.clone();
        let used = tokio::task::spawn_blocking(move || up2.usage(&o2))
            .await
            .unwrap_or(0);
        if used.saturating_add(size) > up.opts.quota {
            return Err(StanzaError::new(Condition::NotAllowed).text(format!(
                "quota exceeded: {used} of {} bytes used",
                up.opts.quota
            )));
        }
    }
    let base = match &up.opts.base_url {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => match req.cx.http_addrs().first() {
            Some(addr) => format!("http://{}:{}", req.cx.host().name, addr.port()),
            None => {
                return Err(StanzaError::new(Condition::ServiceUnavailable)
                    .text("no HTTP listener is configured"));
            }
        },
    };
    let slot_id = format!("{:032x}", rand_u128());
    let path = format!("/upload/{owner}/{slot_id}/{}", sanitize_filename(filename));
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + up.opts.put_expiry;
    let put_sig = up.put_signature(&path, size, &ct, expiry);
    let put = format!(
        "{base}{path}?e={expiry}&n={size}&ct={}&s={put_sig}",
        pct(&ct)
    );
    let get = format!("{base}{path}?s={}", up.get_signature(&path));
    let mut slot = Element::bare("slot", NS_UPLOAD);
    let mut p = Element::bare("put", NS_UPLOAD);
    set_attr(&mut p, "url", put);
    slot.append_child(p);
    let mut g = Element::bare("get", NS_UPLOAD);
    set_attr(&mut g, "url", get);
    slot.append_child(g);
    Ok(Some(slot))
}

fn rand_u128() -> u128 {
    rand::random()
}
