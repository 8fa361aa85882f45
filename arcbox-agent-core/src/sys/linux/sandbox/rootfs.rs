//! A sandbox's root filesystem: made from a directory, an image file or a
//! containerd image, on a Btrfs subvolume when the backend's directory is
//! on Btrfs (so a checkpoint is a read-only snapshot and a restore a
//! writable one, both metadata-only), a plain directory otherwise (then
//! snapshots are copies).
//!
//! An image file is loop-mounted read-only and copied, rather than used as
//! the lower layer of an overlay: the copy makes the sandbox's whole root
//! one subvolume, so snapshots hold everything and the image file may go
//! away; the price is the copy (reflinked where the filesystem can).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::failed;
use crate::sandbox::{ImageUnpacker, RootfsSource, SandboxError};
use crate::sys::linux::LinuxDisk;
use crate::sys::linux::disk::{delete_subvolume, is_subvolume, on_btrfs, snapshot_subvolume};
use crate::sys::{DiskOps as _, SysError};

use super::crun::Programs;

/// `path` resolved (symlinks and `..`), which must lie under one of
/// `allowed` (themselves resolved); `what` names the field for the error.
pub(super) fn allowed_path(what: &str, path: &Path, allowed: &[PathBuf]) -> Result<PathBuf, SandboxError> {
    let resolved =
        path.canonicalize().map_err(|e| SandboxError::Invalid(format!("{what} {}: {e}", path.display())))?;
    let inside =
        allowed.iter().filter_map(|root| root.canonicalize().ok()).any(|root| resolved.starts_with(root));
    if inside {
        Ok(resolved)
    } else {
        let roots: Vec<String> = allowed.iter().map(|r| r.display().to_string()).collect();
        Err(SandboxError::Invalid(format!(
            "{what} {} is outside the allowed roots ({})",
            path.display(),
            if roots.is_empty() { "none are configured".to_owned() } else { roots.join(", ") }
        )))
    }
}

/// Makes `dest` (absent, in an existing directory) as a subvolume on
/// Btrfs or a plain directory elsewhere.
fn make_empty(dest: &Path) -> Result<(), SandboxError> {
    let parent =
        dest.parent().ok_or_else(|| SandboxError::Failed(format!("{} has no parent", dest.display())))?;
    if on_btrfs(parent) {
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("rootfs");
        LinuxDisk.create_subvolume(parent, name).map_err(|e| failed("make the rootfs subvolume", e))?;
        Ok(())
    } else {
        std::fs::create_dir(dest).map_err(|e| failed(&format!("mkdir {}", dest.display()), e))
    }
}

/// Copies the tree `from` into the existing directory `into`, keeping
/// owners, modes, links and devices (`cp -a`), sharing extents where the
/// filesystem can (reflinks on Btrfs).
async fn copy_tree(programs: &Programs, from: &Path, into: &Path) -> Result<(), SandboxError> {
    let source = format!("{}/.", from.display());
    let argv = ["cp", "-a", "--reflink=auto", &source, &into.display().to_string()].map(str::to_owned);
    programs.check(&format!("copy {} into the rootfs", from.display()), argv.to_vec()).await.map(|_| ())
}

/// Makes the root filesystem `dest` from `source` (paths already checked).
/// A failure leaves nothing at `dest`.
pub(super) async fn make(
    programs: &Programs,
    unpacker: Option<&Arc<dyn ImageUnpacker>>,
    source: &RootfsSource,
    dest: &Path,
) -> Result<(), SandboxError> {
    let made = fill(programs, unpacker, source, dest).await;
    if made.is_err() {
        let _ = remove(dest);
    }
    made
}

async fn fill(
    programs: &Programs,
    unpacker: Option<&Arc<dyn ImageUnpacker>>,
    source: &RootfsSource,
    dest: &Path,
) -> Result<(), SandboxError> {
    match source {
        RootfsSource::Directory(dir) => {
            // A subvolume on the same filesystem: a writable snapshot, no copy.
            if is_subvolume(dir) && snapshot_subvolume(dir, dest, false).is_ok() {
                return Ok(());
            }
            make_empty(dest)?;
            copy_tree(programs, dir, dest).await
        }
        RootfsSource::ImageFile(image) => {
            let mount_point = dest.with_extension("image");
            std::fs::create_dir_all(&mount_point)
                .map_err(|e| failed(&format!("mkdir {}", mount_point.display()), e))?;
            let argv =
                ["mount", "-o", "loop,ro", &image.display().to_string(), &mount_point.display().to_string()]
                    .map(str::to_owned);
            let copied = match programs.check(&format!("loop-mount {}", image.display()), argv.to_vec()).await
            {
                Ok(_) => {
                    let copied = match make_empty(dest) {
                        Ok(()) => copy_tree(programs, &mount_point, dest).await,
                        Err(err) => Err(err),
                    };
                    // The loop device goes with the mount (mount sets autoclear).
                    let _ = nix::mount::umount2(&mount_point, nix::mount::MntFlags::MNT_DETACH);
                    copied
                }
                Err(err) => Err(err),
            };
            let _ = std::fs::remove_dir(&mount_point);
            copied
        }
        RootfsSource::Image(reference) => {
            let unpacker = unpacker.ok_or_else(|| {
                SandboxError::Unavailable(format!(
                    "image {reference:?}: no image store is wired to this agent's sandbox backend"
                ))
            })?;
            make_empty(dest)?;
            unpacker.unpack(reference, dest).await
        }
    }
}

/// A copy of the root filesystem `from` at `to`: a snapshot (read-only
/// when asked) when `from` is a subvolume, else a plain copy.
pub(super) async fn snapshot(
    programs: &Programs,
    from: &Path,
    to: &Path,
    readonly: bool,
) -> Result<(), SandboxError> {
    if is_subvolume(from) {
        return snapshot_subvolume(from, to, readonly).map_err(|e| failed("snapshot the rootfs", e));
    }
    let made = match make_empty(to) {
        Ok(()) => copy_tree(programs, from, to).await,
        Err(err) => Err(err),
    };
    if made.is_err() {
        let _ = remove(to);
    }
    made
}

/// Whether rootfs snapshots here are Btrfs snapshots (else copies).
pub(super) fn snapshots_are_cheap(dir: &Path) -> bool {
    on_btrfs(dir)
}

/// Removes the root filesystem `path`, subvolume or directory; absent is fine.
pub(super) fn remove(path: &Path) -> Result<(), SandboxError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if is_subvolume(path) {
        return delete_subvolume(path).map_err(|e: SysError| failed("delete the rootfs subvolume", e));
    }
    std::fs::remove_dir_all(path).map_err(|e| failed(&format!("remove {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_allowed_roots_are_refused_even_through_symlinks() {
        let allowed = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let inside = allowed.path().join("rootfs");
        std::fs::create_dir(&inside).unwrap();
        let roots = vec![allowed.path().to_owned()];
        assert!(allowed_path("rootfs", &inside, &roots).is_ok());
        let link = allowed.path().join("escape");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        let refused = allowed_path("rootfs", &link, &roots).unwrap_err();
        assert!(
            matches!(&refused, SandboxError::Invalid(m) if m.contains("outside the allowed roots")),
            "{refused}"
        );
        let dotdot = inside.join("..").join("..");
        assert!(allowed_path("rootfs", &dotdot, &roots).is_err());
        assert!(matches!(
            allowed_path("rootfs", Path::new("/nonexistent/x"), &roots),
            Err(SandboxError::Invalid(_))
        ));
    }
}
