//! Logging to a file that can be reopened (after logrotate moved it):
//! `palaver serve --log-file PATH` (or `PALAVER_LOG_FILE`), reopened on
//! `SIGUSR1` and by the `reopen_log` command (ejabberdctl's name).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The process's log file.
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

static LOG: OnceLock<Arc<LogFile>> = OnceLock::new();

fn open_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Open `path` (appending) as the process's log file.
pub fn open(path: &Path) -> std::io::Result<Arc<LogFile>> {
    let f = Arc::new(LogFile {
        path: path.to_path_buf(),
        file: Mutex::new(open_file(path)?),
    });
    let _ = LOG.set(f.clone());
    Ok(LOG.get().cloned().unwrap_or(f))
}

/// Reopen the log file by its path; the path, or why not.
pub fn reopen() -> Result<PathBuf, String> {
    let Some(l) = LOG.get() else {
        return Err("the server logs to standard output (no --log-file)".into());
    };
    let f = open_file(&l.path).map_err(|e| format!("{}: {e}", l.path.display()))?;
    let mut g = l.file.lock().unwrap_or_else(|p| p.into_inner());
    *g = f;
    Ok(l.path.clone())
}

/// A writer for the log subscriber.
pub struct LogWriter(pub Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("palaver.log");
        let l = open(&p).unwrap();
        let mut w = LogWriter(l);
        w.write_all(b"one\n").unwrap();
        std::fs::rename(&p, dir.path().join("palaver.log.1")).unwrap();
        w.write_all(b"two\n").unwrap();
        assert_eq!(reopen().unwrap(), p);
        w.write_all(b"three\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("palaver.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "three\n");
    }
}
