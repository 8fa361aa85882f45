//! An in-memory device and Btrfs for data-disk unit tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sys::{CreateOutcome, DiskOps, SysError};

/// A fake [`DiskOps`]: one device image, a set of subvolumes, NOCOW dirs.
#[derive(Debug, Default)]
pub struct FakeDisk {
    /// The device's bytes (its head is what `read_head` returns).
    pub image: Mutex<Vec<u8>>,
    subvolumes: Mutex<BTreeSet<PathBuf>>,
    nocow: Mutex<BTreeSet<PathBuf>>,
}

impl FakeDisk {
    /// A device holding `image`.
    pub fn with_image(image: Vec<u8>) -> Self {
        Self { image: Mutex::new(image), ..Self::default() }
    }

    /// Subvolumes created so far.
    pub fn subvolumes(&self) -> Vec<PathBuf> {
        self.subvolumes.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Directories marked NOCOW so far.
    pub fn nocow_dirs(&self) -> Vec<PathBuf> {
        self.nocow.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

impl DiskOps for FakeDisk {
    fn read_head(&self, _device: &Path, len: usize) -> Result<Vec<u8>, SysError> {
        let image = self.image.lock().unwrap_or_else(|p| p.into_inner());
        Ok(image[..len.min(image.len())].to_vec())
    }

    fn create_subvolume(&self, parent: &Path, name: &str) -> Result<CreateOutcome, SysError> {
        let created = self.subvolumes.lock().unwrap_or_else(|p| p.into_inner()).insert(parent.join(name));
        Ok(if created { CreateOutcome::Created } else { CreateOutcome::Existed })
    }

    fn set_nocow(&self, dir: &Path) -> Result<(), SysError> {
        self.nocow.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.to_owned());
        Ok(())
    }
}
