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

/// A running `palaver serve`.
pub struct Served {
    /// The process (killed when dropped).
    pub child: tokio::process::Child,
    /// What it printed before it served: "listening on ADDR (…)" lines.
    listening: Vec<(String, SocketAddr)>,
    /// Whether it printed its data directory (the last line of its start).
    pub printed_data_dir: bool,
    /// Its later output (the log), line by line.
    pub log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Served {
    /// The address of the first listener whose line contains `what`
    /// (`"C2s)"`, `"direct TLS"`…).
    pub fn addr(&self, what: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(line, _)| line.contains(what))
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("serve printed no {what} listener: {:?}", self.listening))
    }

    /// The first c2s listener.
    pub fn c2s(&self) -> SocketAddr {
        self.addr("C2s)")
    }
}

/// Start `palaver serve --config cfg` (without `PALAVER_CONFIG` from the
/// environment) and read what it prints until it serves.
pub async fn spawn_serve(cfg: &Path) -> Served {
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(cfg)
        .env_remove("PALAVER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut listening = Vec::new();
    let mut printed_data_dir = false;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(TIMEOUT * 3, lines.next_line()).await {
        if line.contains("listening on")
            && let Some(a) = line.split_whitespace().nth(2).and_then(|a| a.parse().ok())
        {
            listening.push((line.clone(), a));
        }
        if line.contains("data directory") {
            printed_data_dir = true;
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    let (tx, log) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    Served {
        child,
        listening,
        printed_data_dir,
        log,
    }
}

/// Start `palaver serve` with `cfg`; the child (killed when dropped) and
/// its c2s address, once it has said it serves.
pub async fn serve(cfg: &Path) -> (tokio::process::Child, SocketAddr) {
    let s = spawn_serve(cfg).await;
    let addr = s.c2s();
    (s.child, addr)
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
