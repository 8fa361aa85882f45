//! Files, directories, symlinks, sysctl writes and `sync()` for the init
//! plan. Writes compare first, so a second run reports "unchanged".

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::sys::{CreateOutcome, FileOps, SysError, WriteOutcome};

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxFiles;

impl FileOps for LinuxFiles {
    fn read_to_string(&self, path: &Path) -> Result<String, SysError> {
        std::fs::read_to_string(path).map_err(|e| SysError::io("read", path, e))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<WriteOutcome, SysError> {
        if std::fs::read(path).is_ok_and(|current| current == contents) {
            return Ok(WriteOutcome::Unchanged);
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| SysError::io("open", path, e))?;
        file.write_all(contents).map_err(|e| SysError::io("write", path, e))?;
        Ok(WriteOutcome::Written)
    }

    fn create_dir_all(&self, path: &Path) -> Result<CreateOutcome, SysError> {
        if path.is_dir() {
            return Ok(CreateOutcome::Existed);
        }
        std::fs::create_dir_all(path).map_err(|e| SysError::io("mkdir", path, e))?;
        Ok(CreateOutcome::Created)
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<CreateOutcome, SysError> {
        match std::fs::read_link(link) {
            Ok(current) if current == target => return Ok(CreateOutcome::Existed),
            Ok(_) => std::fs::remove_file(link).map_err(|e| SysError::io("unlink", link, e))?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(target, link).map_err(|e| SysError::io("symlink", link, e))?;
        Ok(CreateOutcome::Created)
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>, SysError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| SysError::io("readdir", path, e))? {
            let entry = entry.map_err(|e| SysError::io("readdir", path, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn remove_all(&self, path: &Path) -> Result<(), SysError> {
        let result = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        result.map_err(|e| SysError::io("remove", path, e))
    }

    fn is_read_only(&self, path: &Path) -> Result<bool, SysError> {
        let stat =
            nix::sys::statvfs::statvfs(path).map_err(|errno| SysError::io("statvfs", path, errno.into()))?;
        Ok(stat.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    }

    fn sync(&self) {
        nix::unistd::sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_identical_write_is_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        assert_eq!(LinuxFiles.write_file(&path, b"a\n", 0o644).expect("write"), WriteOutcome::Written);
        assert_eq!(LinuxFiles.write_file(&path, b"a\n", 0o644).expect("write"), WriteOutcome::Unchanged);
        assert_eq!(LinuxFiles.write_file(&path, b"b\n", 0o644).expect("write"), WriteOutcome::Written);
    }

    #[test]
    fn symlinks_are_replaced_only_when_they_point_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("ca.crt");
        assert_eq!(LinuxFiles.symlink(Path::new("/a"), &link).expect("link"), CreateOutcome::Created);
        assert_eq!(LinuxFiles.symlink(Path::new("/a"), &link).expect("link"), CreateOutcome::Existed);
        assert_eq!(LinuxFiles.symlink(Path::new("/b"), &link).expect("link"), CreateOutcome::Created);
        assert_eq!(std::fs::read_link(&link).expect("readlink"), Path::new("/b"));
    }
}
