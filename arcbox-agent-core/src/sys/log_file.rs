//! Size-rotated log files: `agent.log` plus `agent.log.1`..`.N-1`, the
//! oldest dropped. The reference's log never rotated and filled the host's
//! disk; daemon output goes through the same writer.
//!
//! Plain `std::fs` append I/O with no policy of its own (sizes and counts
//! come from the caller), so the spawner's output pumps and the agent's
//! tracing layer share it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An append-only file that rotates itself by size.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    files: u32,
    file: File,
    written: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl RotatingFile {
    /// Opens (or creates) `path`, creating its directory.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, files: u32) -> io::Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        let written = file.metadata()?.len();
        Ok(Self { path, max_bytes: max_bytes.max(1), files: files.max(1), file, written })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.files == 1 {
            self.file.set_len(0)?;
        } else {
            // agent.log.3 -> .4, ..., agent.log -> .1; the oldest is overwritten.
            for n in (1..self.files - 1).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    std::fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
            self.file = open_append(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A cloneable handle to one rotating file, for writers on many threads
/// (tracing's `MakeWriter`, output pumps). Writes of one buffer are atomic
/// with respect to each other.
#[derive(Debug, Clone)]
pub struct SharedLog(Arc<Mutex<RotatingFile>>);

impl SharedLog {
    /// Wraps `file`.
    pub fn new(file: RotatingFile) -> Self {
        Self(Arc::new(Mutex::new(file)))
    }
}

impl Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_at_most_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/agent.log");
        let mut log = RotatingFile::open(&path, 10, 3).unwrap();
        for i in 0..10 {
            log.write_all(format!("line-{i:02}\n").as_bytes()).unwrap();
        }
        log.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["agent.log", "agent.log.1", "agent.log.2"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line-09\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("log/agent.log.1")).unwrap(), "line-08\n");
    }

    #[test]
    fn reopening_continues_counting_the_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        std::fs::write(&path, "0123456789").unwrap();
        let mut log = RotatingFile::open(&path, 12, 2).unwrap();
        log.write_all(b"abc").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc");
        assert_eq!(std::fs::read_to_string(dir.path().join("d.log.1")).unwrap(), "0123456789");
    }

    #[test]
    fn a_shared_log_writes_whole_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut shared = SharedLog::new(RotatingFile::open(&path, 1 << 20, 2).unwrap());
        shared.write_all(b"hello\n").unwrap();
        shared.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    }
}
