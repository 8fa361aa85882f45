//! Checkpoints: the sandbox frozen (`crun pause`, the cgroup freezer), its
//! rootfs snapshotted read-only, thawed; then its processes dumped with
//! CRIU (`crun checkpoint --leave-running`) when this crun and kernel can.
//! When they cannot, the snapshot is `Filesystem` with a note saying why.
//! Restores make a new sandbox on a writable snapshot of the snapshot's
//! rootfs: `crun restore` for `Processes`, a fresh init for `Filesystem`.
//!
//! `<root>/snapshots/<id>/` holds `rootfs/`, `criu/` (the dump) and
//! `snapshot.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::failed;
use super::{OciBackend, Start, crun, rootfs};
use crate::sandbox::{Launched, SandboxError, SandboxSpec, SnapshotKind, SnapshotTaken};

/// What a snapshot is, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotRecord {
    /// The sandbox it was taken of.
    sandbox: String,
    /// `filesystem` or `processes`.
    kind: String,
    /// Why processes were not dumped, or how the rootfs was kept.
    note: Option<String>,
}

/// Snapshots sandbox `id` as `snapshot_id` (see the module doc).
pub(super) async fn checkpoint(
    backend: &OciBackend,
    id: &str,
    snapshot_id: &str,
) -> Result<SnapshotTaken, SandboxError> {
    let state =
        backend.crun.state(id).await?.ok_or_else(|| SandboxError::NotFound(format!("no sandbox {id}")))?;
    if state.status != "running" {
        return Err(SandboxError::Conflict(format!("sandbox {id} is {}, not running", state.status)));
    }
    let dir = backend.snapshot_dir(snapshot_id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(SandboxError::Conflict(format!("snapshot {snapshot_id} already exists")));
        }
        Err(err) => return Err(failed(&format!("mkdir {}", dir.display()), err)),
    }
    let taken = take(backend, id, &dir).await;
    if taken.is_err() {
        let _ = delete(backend, snapshot_id);
    }
    taken
}

async fn take(backend: &OciBackend, id: &str, dir: &Path) -> Result<SnapshotTaken, SandboxError> {
    let rootfs_dir = backend.sandbox_dir(id).join("rootfs");
    // Frozen, so no file changes half-way through the snapshot.
    backend.crun.check("pause", &["pause", id]).await?;
    let snapped = rootfs::snapshot(backend.crun.programs(), &rootfs_dir, &dir.join("rootfs"), true).await;
    let thawed = backend.crun.check("resume", &["resume", id]).await;
    snapped?;
    thawed?;
    let mut notes = Vec::new();
    if !rootfs::snapshots_are_cheap(&backend.config.root) {
        notes.push(format!(
            "rootfs copied, not snapshotted: {} is not on Btrfs",
            backend.config.root.display()
        ));
    }
    let kind = if backend.checkpoints {
        let images = dir.join("criu");
        let work = dir.join("criu-work");
        let (images, work) = (images.display().to_string(), work.display().to_string());
        let args = ["checkpoint", "--image-path", &images, "--work-path", &work, "--leave-running", id];
        let ran = backend.crun.run(&args).await?;
        if ran.status.success() {
            SnapshotKind::Processes
        } else {
            notes.insert(0, format!("processes not dumped: CRIU failed: {}", crun::key_line(&ran.stderr)));
            let _ = std::fs::remove_dir_all(dir.join("criu"));
            SnapshotKind::Filesystem
        }
    } else {
        notes.insert(
            0,
            format!(
                "processes not dumped: {} ({}) is built without CRIU support (no checkpoint command)",
                backend.crun.binary().display(),
                backend.version
            ),
        );
        SnapshotKind::Filesystem
    };
    let _ = std::fs::remove_dir_all(dir.join("criu-work"));
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    let record = SnapshotRecord { sandbox: id.to_owned(), kind: kind.name().to_owned(), note: note.clone() };
    let text = serde_json::to_vec_pretty(&record).map_err(|e| failed("encode", e))?;
    std::fs::write(dir.join("snapshot.json"), text).map_err(|e| failed("write snapshot.json", e))?;
    Ok(SnapshotTaken { dir: dir.to_owned(), kind, note })
}

/// Makes sandbox `spec.id` from snapshot `snapshot_id`.
pub(super) async fn restore(
    backend: &OciBackend,
    snapshot_id: &str,
    kind: SnapshotKind,
    spec: &SandboxSpec,
) -> Result<Launched, SandboxError> {
    let snapshot = backend.snapshot_dir(snapshot_id);
    if !snapshot.join("snapshot.json").is_file() {
        return Err(SandboxError::NotFound(format!("no snapshot {snapshot_id}")));
    }
    let images = snapshot.join("criu");
    if kind == SnapshotKind::Processes && !images.is_dir() {
        return Err(SandboxError::Invalid(format!("snapshot {snapshot_id} holds no process dump")));
    }
    backend.check_spec(spec, false)?;
    let dir = backend.claim(&spec.id)?;
    let (from, to) = (snapshot.join("rootfs"), dir.join("rootfs"));
    let make = rootfs::snapshot(backend.crun.programs(), &from, &to, false);
    let start = match kind {
        SnapshotKind::Processes => Start::Restore(&images),
        SnapshotKind::Filesystem => Start::Fresh,
    };
    backend.make_and_launch(spec, make, start).await
}

/// Deletes snapshot `snapshot_id`; one already gone is fine.
pub(super) fn delete(backend: &OciBackend, snapshot_id: &str) -> Result<(), SandboxError> {
    let dir = backend.snapshot_dir(snapshot_id);
    rootfs::remove(&dir.join("rootfs"))?;
    super::remove_tree(&dir)
}
