//! The `external` auth backend: ejabberd's extauth protocol. A pool of
//! `extauth_pool_size` copies of `extauth_program`, each asked one question
//! at a time on its standard input: a 2-byte big-endian length then
//! `auth:USER:SERVER:PASSWORD`, `isuser:USER:SERVER`,
//! `setpass:USER:SERVER:PASSWORD`, `tryregister:USER:SERVER:PASSWORD` or
//! `removeuser:USER:SERVER`; it answers 2 bytes of length (2) and a
//! 2-byte big-endian result, 1 for yes and 0 for no.
//!
//! A program that is not running is started at the next question; one
//! that exits, answers garbage or takes longer than [`TIMEOUT`] is killed,
//! the question is a temporary failure, and a fresh copy starts next time.

use super::AuthOutcome;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

/// Time one question may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

/// The pool of one host.
pub struct ExtAuth {
    argv: Vec<String>,
    pool: Vec<Mutex<Option<Proc>>>,
    next: AtomicUsize,
}

impl ExtAuth {
    /// A pool of `size` copies of `program` (a command line split on
    /// spaces), started on first use.
    pub fn new(program: &str, size: usize) -> Result<ExtAuth, String> {
        let argv: Vec<String> = program.split_whitespace().map(str::to_string).collect();
        if argv.is_empty() {
            return Err("`extauth_program` is empty".into());
        }
        Ok(ExtAuth {
            argv,
            pool: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    fn spawn(&self) -> std::io::Result<Proc> {
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        Ok(Proc {
            child,
            stdin,
            stdout,
        })
    }

    /// Ask one question; `Err` when the program failed.
    async fn ask(&self, question: &str) -> Result<bool, AuthOutcome> {
        let len = u16::try_from(question.len()).map_err(|_| AuthOutcome::Denied)?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut slot = self.pool[i].lock().await;
        if slot.is_none() {
            match self.spawn() {
                Ok(p) => *slot = Some(p),
                Err(e) => {
                    tracing::warn!(program = %self.argv[0], error = %e, "extauth program does not start");
                    return Err(AuthOutcome::Temporary);
                }
            }
        }
        let Some(p) = slot.as_mut() else {
            return Err(AuthOutcome::Temporary);
        };
        let exchange = async {
            let mut msg = Vec::with_capacity(question.len() + 2);
            msg.extend_from_slice(&len.to_be_bytes());
            msg.extend_from_slice(question.as_bytes());
            p.stdin.write_all(&msg).await?;
            p.stdin.flush().await?;
            let mut ans = [0u8; 4];
            p.stdout.read_exact(&mut ans).await?;
            if ans[..2] != [0, 2] {
                return Err(std::io::Error::other("answer length is not 2"));
            }
            Ok::<u16, std::io::Error>(u16::from_be_bytes([ans[2], ans[3]]))
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(Ok(1)) => Ok(true),
            Ok(Ok(0)) => Ok(false),
            failed => {
                match failed {
                    Ok(Ok(n)) => {
                        tracing::warn!(answer = n, "extauth program: answer is not 0 or 1")
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "extauth program failed"),
                    Err(_) => tracing::warn!("extauth program timed out"),
                }
                if let Some(mut p) = slot.take() {
                    let _ = p.child.start_kill();
                    tokio::spawn(async move {
                        let _ = p.child.wait().await;
                    });
                }
                Err(AuthOutcome::Temporary)
            }
        }
    }

    fn fields_ok(parts: &[&str]) -> bool {
        // The protocol separates fields with `:`; user and server never
        // contain one (nodeprep / domains), a password may (it is last).
        parts.iter().all(|p| !p.contains(':'))
    }

    /// `auth:USER:SERVER:PASSWORD`.
    pub async fn check_password(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        if !Self::fields_ok(&[user, host]) {
            return AuthOutcome::Denied;
        }
        match self.ask(&format!("auth:{user}:{host}:{password}")).await {
            Ok(true) => AuthOutcome::Ok,
            Ok(false) => AuthOutcome::Denied,
            Err(e) => e,
        }
    }

    /// `isuser:USER:SERVER`.
    pub async fn user_exists(&self, host: &str, user: &str) -> Result<bool, AuthOutcome> {
        if !Self::fields_ok(&[user, host]) {
            return Ok(false);
        }
        self.ask(&format!("isuser:{user}:{host}")).await
    }

    /// `setpass:USER:SERVER:PASSWORD`.
    pub async fn set_password(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        if !Self::fields_ok(&[user, host]) {
            return AuthOutcome::Denied;
        }
        match self.ask(&format!("setpass:{user}:{host}:{password}")).await {
            Ok(true) => AuthOutcome::Ok,
            Ok(false) => AuthOutcome::Denied,
            Err(e) => e,
        }
    }

    /// `tryregister:USER:SERVER:PASSWORD`.
    pub async fn register(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        if !Self::fields_ok(&[user, host]) {
            return AuthOutcome::Denied;
        }
        match self
            .ask(&format!("tryregister:{user}:{host}:{password}"))
            .await
        {
            Ok(true) => AuthOutcome::Ok,
            Ok(false) => AuthOutcome::Denied,
            Err(e) => e,
        }
    }

    /// `removeuser:USER:SERVER`.
    pub async fn remove_user(&self, host: &str, user: &str) -> AuthOutcome {
        if !Self::fields_ok(&[user, host]) {
            return AuthOutcome::Denied;
        }
        match self.ask(&format!("removeuser:{user}:{host}")).await {
            Ok(true) => AuthOutcome::Ok,
            Ok(false) => AuthOutcome::Denied,
            Err(e) => e,
        }
    }
}
