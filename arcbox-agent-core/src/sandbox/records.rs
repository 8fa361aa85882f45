//! What the service remembers across agent restarts: one JSON file per
//! sandbox and per snapshot under the state directory, each written to a
//! temporary name and renamed, so a crash leaves the old record or the new
//! one, never half of either.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::spec::{SandboxNetwork, SandboxSpec, SnapshotKind};

/// A sandbox as the service keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// What it was made from (after a restore: the snapshot's spec with
    /// the new id, labels and TTL).
    pub spec: SandboxSpec,
    /// Its address.
    pub network: SandboxNetwork,
    /// Unix seconds: made, running, last init exit (0: not yet).
    pub created_at: i64,
    /// Unix seconds its init started running (0: not yet).
    pub ready_at: i64,
    /// Unix seconds its init last exited (0: not yet).
    pub last_exited_at: i64,
    /// Its init's last exit code.
    pub last_exit_code: i32,
    /// Why it failed ("" unless it did).
    pub error: String,
    /// Whether its init was stopped or exited (else it runs).
    pub stopped: bool,
    /// The snapshot it was restored from, if any.
    pub restored_from: Option<String>,
}

/// A snapshot as the service keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its id.
    pub id: String,
    /// The sandbox it was taken of.
    pub sandbox_id: String,
    /// The name the host gave it.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Where the backend keeps it.
    pub dir: PathBuf,
    /// When it was taken, RFC 3339 (UTC).
    pub created_at: String,
    /// What it holds.
    pub kind: SnapshotKind,
    /// Why processes were not dumped, when they were not.
    pub note: Option<String>,
    /// The sandbox's spec when it was taken (what a restore starts from).
    pub spec: SandboxSpec,
}

/// The record files under one directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

const SANDBOXES: &str = "sandboxes";
const SNAPSHOTS: &str = "snapshots";

impl RecordStore {
    /// Records under `dir` (made when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Saves (or replaces) a sandbox's record.
    pub fn save_sandbox(&self, record: &SandboxRecord) -> std::io::Result<()> {
        self.save(SANDBOXES, &record.spec.id, record)
    }

    /// Forgets a sandbox.
    pub fn delete_sandbox(&self, id: &str) -> std::io::Result<()> {
        self.delete(SANDBOXES, id)
    }

    /// Every sandbox record, and the files that could not be read (with why).
    pub fn load_sandboxes(&self) -> (Vec<SandboxRecord>, Vec<String>) {
        self.load(SANDBOXES)
    }

    /// Saves a snapshot's record.
    pub fn save_snapshot(&self, record: &SnapshotRecord) -> std::io::Result<()> {
        self.save(SNAPSHOTS, &record.id, record)
    }

    /// Forgets a snapshot.
    pub fn delete_snapshot(&self, id: &str) -> std::io::Result<()> {
        self.delete(SNAPSHOTS, id)
    }

    /// Every snapshot record, and the files that could not be read.
    pub fn load_snapshots(&self) -> (Vec<SnapshotRecord>, Vec<String>) {
        self.load(SNAPSHOTS)
    }

    fn path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{id}.json"))
    }

    fn save<T: Serialize>(&self, kind: &str, id: &str, record: &T) -> std::io::Result<()> {
        let path = self.path(kind, id);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let staged = dir.join(format!(".{id}.json.tmp"));
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        std::fs::write(&staged, bytes)?;
        std::fs::rename(&staged, &path)
    }

    fn delete(&self, kind: &str, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(kind, id)) {
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn load<T: for<'de> Deserialize<'de>>(&self, kind: &str) -> (Vec<T>, Vec<String>) {
        let (mut records, mut problems) = (Vec::new(), Vec::new());
        let entries = match std::fs::read_dir(self.dir.join(kind)) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => return (records, problems),
            Err(err) => return (records, vec![format!("{}: {err}", self.dir.join(kind).display())]),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json")
                || entry.file_name().to_string_lossy().starts_with('.')
            {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
            {
                Ok(record) => records.push(record),
                Err(err) => problems.push(format!("{}: {err}", path.display())),
            }
        }
        (records, problems)
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `time` as RFC 3339 in UTC with seconds (`2026-12-07T20:15:00Z`).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sandbox::spec::test_spec;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_674_500)), "2026-12-07T20:15:00Z");
    }

    #[test]
    fn records_survive_a_reload_and_a_torn_file_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path());
        let record = SandboxRecord {
            spec: test_spec("a"),
            network: SandboxNetwork::default(),
            created_at: 1,
            ready_at: 2,
            last_exited_at: 0,
            last_exit_code: 0,
            error: String::new(),
            stopped: false,
            restored_from: None,
        };
        store.save_sandbox(&record).unwrap();
        std::fs::write(dir.path().join("sandboxes/b.json"), b"{ torn").unwrap();
        let (records, problems) = store.load_sandboxes();
        assert_eq!(records, vec![record]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("b.json"));
        store.delete_sandbox("a").unwrap();
        store.delete_sandbox("a").unwrap();
        assert!(store.load_sandboxes().0.is_empty());
        assert!(store.load_snapshots().0.is_empty());
    }
}
