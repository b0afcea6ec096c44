//! The real `palaver` binary as a child process: for what only a process
//! shows, such as what survives `kill -9`.

use super::{TIMEOUT, backend_is_pg, config_text, pg_keys};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_palaver");

/// Write the test configuration (`config_text` with `modules`) into `dir`,
/// on a fresh PostgreSQL database (named after `label`) when the suite runs
/// on PostgreSQL; the database lives as long as the returned handle.
pub async fn write_config(
    dir: &Path,
    modules: &str,
    label: &str,
) -> (PathBuf, Option<palaver_storage::postgres::testdb::TestDb>) {
    let cfg = dir.join("palaver.yml");
    let mut text = config_text(dir, "", modules);
    let pg = if backend_is_pg() {
        palaver_storage::postgres::testdb::TestDb::create(label).await
    } else {
        None
    };
    if let Some(db) = &pg {
        text.push_str(&pg_keys(&db.url));
    }
    std::fs::write(&cfg, text).expect("write config");
    (cfg, pg)
}

/// Start `palaver serve` with `cfg`; the child (killed when dropped) and
/// its c2s address, once it has said it serves.
pub async fn serve(cfg: &Path) -> (tokio::process::Child, SocketAddr) {
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(TIMEOUT * 3, lines.next_line()).await {
        if addr.is_none() && line.contains("listening on") && line.contains("C2s)") {
            let a = line.split_whitespace().nth(2).expect("address");
            addr = Some(a.parse().expect("socket address"));
        }
        if line.contains("data directory") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr.expect("serve printed its c2s address"))
}

/// `palaver user add JID pw` with `cfg`.
pub fn add_user(cfg: &Path, jid: &str) {
    let out = std::process::Command::new(BIN)
        .args(["user", "add", jid, "pw", "--config"])
        .arg(cfg)
        .output()
        .expect("run palaver user add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
