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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
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

/// Lines a [`BackgroundLog`] holds before it drops new ones.
pub const BACKGROUND_LOG_LINES: usize = 4096;

/// A writer that never blocks its callers: buffers go to a thread of its
/// own that writes them out, and when that thread falls behind (the file
/// is on a host share whose virtiofsd died, where a write blocks for good)
/// new buffers are dropped and counted, so logging from an RPC handler can
/// never hang the agent. The count is written out once the file takes
/// lines again.
#[derive(Debug, Clone)]
pub struct BackgroundLog {
    lines: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl BackgroundLog {
    /// Starts the writer thread over `sink`, holding up to `capacity` buffers.
    pub fn start(mut sink: impl Write + Send + 'static, capacity: usize) -> io::Result<Self> {
        let (lines, queue) = mpsc::sync_channel::<Vec<u8>>(capacity.max(1));
        std::thread::Builder::new().name("log-writer".into()).spawn(move || {
            for line in queue {
                // A failed write is dropped: there is nowhere else to report it.
                let _ = sink.write_all(&line).and_then(|()| sink.flush());
            }
        })?;
        Ok(Self { lines, dropped: Arc::default() })
    }

    /// Buffers dropped so far because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Write for BackgroundLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.lines.try_send(buf.to_vec()) {
            Ok(()) => {
                let lost = self.dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    let note =
                        format!("arcbox-agent: {lost} log lines dropped: the log file did not keep up\n");
                    if self.lines.try_send(note.into_bytes()).is_err() {
                        self.dropped.fetch_add(lost, Ordering::Relaxed);
                    }
                }
            }
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer thread is gone (it panicked): nothing to write to.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

    /// A sink whose writes block until released, as on a dead share.
    struct Stuck(Arc<(Mutex<bool>, std::sync::Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, cv) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_background_log_never_blocks_on_a_stuck_file_and_says_what_it_dropped() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut log = BackgroundLog::start(Stuck(Arc::clone(&gate), Arc::clone(&written)), 2).unwrap();
        let started = std::time::Instant::now();
        for i in 0..100 {
            log.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "a write waited for the stuck file");
        // One line is in the stuck write, two are queued; the rest were dropped.
        assert!(log.dropped() >= 97, "dropped {}", log.dropped());
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while log.write_all(b"after\n").is_ok() && log.dropped() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        while !String::from_utf8_lossy(&written.lock().unwrap()).contains("lines dropped")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let text = String::from_utf8_lossy(&written.lock().unwrap()).into_owned();
        assert!(text.starts_with("line 0\n"), "{text}");
        assert!(text.contains("log lines dropped: the log file did not keep up"), "{text}");
    }
}
