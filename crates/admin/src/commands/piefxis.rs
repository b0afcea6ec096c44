//! XEP-0227: export_piefxis_host, import_piefxis (see [`crate::piefxis`]).

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use crate::piefxis::{self, ImportOptions, PieError};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

fn error(e: PieError) -> CommandError {
    let code = match &e {
        PieError::Io { .. } => ErrorCode::Io,
        PieError::Invalid { .. } | PieError::Unusable(_) => ErrorCode::InvalidData,
        PieError::UnknownHost { .. } => ErrorCode::BadArgument,
        PieError::Exists { .. } => ErrorCode::Conflict,
        PieError::Storage { .. } | PieError::Partial { .. } => ErrorCode::Storage,
    };
    CommandError::new(code, e.to_string())
}

fn counts(c: &[(&'static str, usize)]) -> Value {
    Value::Object(
        c.iter()
            .map(|(l, n)| (l.to_string(), Value::from(*n)))
            .collect::<Map<_, _>>(),
    )
}

pub(super) async fn export(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let host = a.text("host")?;
    let file = a.text("file")?;
    let (doc, rep) = piefxis::export_host(&cx.core, host).await.map_err(error)?;
    let xml = piefxis::to_xml(&doc);
    let to_stdout = file == "-";
    if !to_stdout {
        write_private_file(Path::new(file), xml.as_bytes())
            .map_err(|e| CommandError::new(ErrorCode::Io, format!("writing {file}: {e}")))?;
    }
    let mut out = json!({
        "message": format!(
            "exported {} account(s) of {host} to {}: {}",
            rep.accounts,
            if to_stdout { "standard output" } else { file },
            rep.tally.summary()
        ),
        "warnings": rep.tally.warnings,
        "accounts": rep.accounts,
        "counts": counts(&rep.tally.counts),
        "file": file,
    });
    if to_stdout && let Some(o) = out.as_object_mut() {
        o.insert("xml".into(), Value::String(xml));
    }
    Ok(out)
}

pub(super) async fn import(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let file = a.text("file")?;
    let force = a.flag("force");
    // The whole file (and what it includes) is checked before anything is written.
    let parsed = piefxis::read_file(Path::new(file)).map_err(error)?;
    let rep = piefxis::import(&cx.core, &parsed.doc, &ImportOptions { force })
        .await
        .map_err(error)?;
    let mut warnings = parsed.warnings;
    warnings.extend(rep.tally.warnings.iter().cloned());
    Ok(json!({
        "message": format!(
            "imported {} account(s) from {file} ({} created, {} replaced; {} with credentials derived from a plaintext password): {}",
            rep.created.len() + rep.replaced.len(),
            rep.created.len(),
            rep.replaced.len(),
            rep.derived,
            rep.tally.summary()
        ),
        "warnings": warnings,
        "created": rep.created,
        "replaced": rep.replaced,
        "derived": rep.derived,
        "counts": counts(&rep.tally.counts),
    }))
}

/// Write `data` to `path` through a temporary file in the same directory,
/// readable by the owner only (an export holds credentials).
pub(crate) fn write_private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    // Unique per process and call: a server may run two exports at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
