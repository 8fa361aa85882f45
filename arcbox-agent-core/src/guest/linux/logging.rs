//! Logging: tracing to the console (hvc1 when present, else stderr) and,
//! once the host share is mounted, to a size-rotated file on it. The file
//! layer exists from the start and writes nowhere until the file is
//! attached, because the share is mounted by init after logging starts.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::config::LogConfig;
use crate::sys::log_file::{BACKGROUND_LOG_LINES, BackgroundLog, RotatingFile};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The log file, attached once its directory exists. Written from a
/// thread of its own ([`BackgroundLog`]): the file is on the host share,
/// and a share that stops answering must not stop the agent's logging.
#[derive(Clone, Default)]
pub struct LateFile(Arc<OnceLock<BackgroundLog>>);

/// A writer to the late file, or to nowhere before it is attached.
pub enum LateWriter {
    /// Attached.
    File(BackgroundLog),
    /// Not yet.
    Nowhere,
}

impl Write for LateWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LateWriter::File(f) => f.write(buf),
            LateWriter::Nowhere => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LateWriter::File(f) => f.flush(),
            LateWriter::Nowhere => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for LateFile {
    type Writer = LateWriter;
    fn make_writer(&'a self) -> LateWriter {
        self.0.get().map_or(LateWriter::Nowhere, |f| LateWriter::File(f.clone()))
    }
}

impl LateFile {
    /// Opens the configured file if its share is there; says what happened.
    pub fn attach(&self, config: &LogConfig) -> Result<(), String> {
        let share = config.file.ancestors().nth(2).unwrap_or(Path::new("/"));
        if !share.exists() {
            return Err(format!("{} absent", share.display()));
        }
        let file = RotatingFile::open(&config.file, config.max_bytes, config.files)
            .map_err(|e| format!("{}: {e}", config.file.display()))?;
        let writer = BackgroundLog::start(file, BACKGROUND_LOG_LINES)
            .map_err(|e| format!("{}: no writer thread: {e}", config.file.display()))?;
        // A second attach keeps the first file.
        let _ = self.0.set(writer);
        Ok(())
    }
}

/// Installs the subscriber; RUST_LOG beats the configured filter.
pub fn init(config: &LogConfig) -> LateFile {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let late = LateFile::default();
    let console = tracing_subscriber::fmt::layer().with_ansi(false);
    let file = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(late.clone());
    let registry = tracing_subscriber::registry().with(filter).with(file);
    let result = match std::fs::OpenOptions::new().write(true).open("/dev/hvc1") {
        Ok(hvc1) => registry.with(console.with_writer(std::sync::Mutex::new(hvc1))).try_init(),
        Err(_) => registry.with(console.with_writer(std::io::stderr)).try_init(),
    };
    if let Err(err) = result {
        eprintln!("arcbox-agent: logging already set up: {err}");
    }
    late
}
