//! The Btrfs data disk behind Docker, containerd and k3s.
//!
//! On every boot: classify the device, format it only when provably blank
//! (or when wiping is explicitly allowed), mount the raw filesystem,
//! create the subvolumes by ioctl, mount each at its final path, and mark
//! the metadata directories NOCOW. Every step is idempotent, so a second
//! boot keeps all data. The reference wiped any disk whose Btrfs magic was
//! missing; this never formats somebody's filesystem.

mod signature;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use signature::{DiskContents, HEAD_BYTES, Signature, classify};

use crate::sys::{
    CreateOutcome, DiskOps, FileOps, MountFlags, MountOps, MountOutcome, MountSpec, ProcessSpawner,
    ProcessSpec, SysError,
};

/// Label given to data disks this agent formats.
pub const DATA_DISK_LABEL: &str = "arcbox-data";

/// One subvolume and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subvolume {
    /// Subvolume name, e.g. `@docker`.
    pub name: String,
    /// Mount point, e.g. `/var/lib/docker`.
    pub target: PathBuf,
    /// Directories under `target` marked NOCOW (databases that fsync a lot).
    pub nocow_dirs: Vec<String>,
}

/// Where the data disk is and how it is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDiskConfig {
    /// The block device (cmdline `arcbox.docker_data_device=`; default `/dev/vdb`).
    pub device: PathBuf,
    /// Where the raw filesystem is mounted (the subvolumes' parent).
    pub raw_mount: PathBuf,
    /// Btrfs options of the raw mount and of every subvolume mount
    /// (`subvol=` is added). They must be one set: Btrfs options belong to
    /// the superblock, so the first mount decides them and later subvolume
    /// mounts cannot change them (the reference's `zstd:3` raw mount made
    /// its `zstd:1` subvolume option a silent no-op).
    pub options: String,
    /// The subvolumes.
    pub subvolumes: Vec<Subvolume>,
    /// Format a device that holds something else. Off by default: data is never lost silently.
    pub allow_wipe: bool,
    /// The mkfs program.
    pub mkfs: PathBuf,
}

impl Default for DataDiskConfig {
    fn default() -> Self {
        let sub = |name: &str, target: &str, nocow: &[&str]| Subvolume {
            name: name.to_owned(),
            target: PathBuf::from(target),
            nocow_dirs: nocow.iter().map(|d| (*d).to_owned()).collect(),
        };
        Self {
            device: PathBuf::from("/dev/vdb"),
            raw_mount: PathBuf::from("/run/arcbox/data"),
            options: "compress=zstd:1,discard=async,space_cache=v2".to_owned(),
            subvolumes: vec![
                sub(
                    "@docker",
                    "/var/lib/docker",
                    &["containerd", "network", "builder", "buildkit", "image", "trust"],
                ),
                sub(
                    "@containerd",
                    "/var/lib/containerd",
                    &["io.containerd.metadata.v1.bolt", "io.containerd.snapshotter.v1.overlayfs"],
                ),
                sub("@k3s", "/var/lib/rancher/k3s", &[]),
                sub("@kubelet", "/var/lib/kubelet", &[]),
                sub("@cni", "/var/lib/cni", &[]),
                sub("@sandboxes", crate::config::SANDBOX_ROOT, &[]),
            ],
            allow_wipe: false,
            mkfs: PathBuf::from("mkfs.btrfs"),
        }
    }
}

/// Why the data disk could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The device holds something that is not ours; it was left untouched.
    #[error("refusing to format {device}: it holds a {found} (set allow_wipe to format it anyway)")]
    RefusedKnown {
        /// The device.
        device: PathBuf,
        /// What was found.
        found: &'static str,
    },
    /// The device has data we do not recognise; it was left untouched.
    #[error(
        "refusing to format {device}: it is not blank (non-zero byte at offset {offset}, no known signature; set allow_wipe to format it anyway)"
    )]
    RefusedUnknown {
        /// The device.
        device: PathBuf,
        /// First non-zero byte.
        offset: usize,
    },
    /// mkfs failed.
    #[error("mkfs.btrfs on {device} failed: {detail}")]
    Mkfs {
        /// The device.
        device: PathBuf,
        /// Exit status or spawn error.
        detail: String,
    },
    /// An OS operation failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// What bringing the data disk up did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataDiskReport {
    /// The device was formatted now.
    pub formatted: bool,
    /// Subvolumes created now (the rest existed).
    pub created: Vec<String>,
    /// Mount points mounted now (the rest were mounted already).
    pub mounted: Vec<PathBuf>,
}

/// The data disk over the OS traits.
pub struct DataDisk<M, F, P, D> {
    mounts: Arc<M>,
    files: Arc<F>,
    spawner: Arc<P>,
    disk: Arc<D>,
    config: DataDiskConfig,
}

impl<M: MountOps, F: FileOps, P: ProcessSpawner, D: DiskOps> DataDisk<M, F, P, D> {
    /// A data disk laid out as `config`.
    pub fn new(mounts: Arc<M>, files: Arc<F>, spawner: Arc<P>, disk: Arc<D>, config: DataDiskConfig) -> Self {
        Self { mounts, files, spawner, disk, config }
    }

    /// The layout.
    pub fn config(&self) -> &DataDiskConfig {
        &self.config
    }

    /// Brings the data disk up; safe to call on every boot.
    pub async fn ensure(&self) -> Result<DataDiskReport, StorageError> {
        let mut report = DataDiskReport::default();
        if !self.mounts.is_mounted(&self.config.raw_mount)? {
            report.formatted = self.format_if_blank().await?;
        }
        self.mount_raw(&mut report)?;
        for sub in &self.config.subvolumes {
            self.mount_subvolume(sub, &mut report)?;
        }
        Ok(report)
    }

    /// Mounts the data disk only if it is up already or holds a Btrfs
    /// filesystem; a blank or foreign disk is left for [`Self::ensure`]
    /// (`None`). For services that look for their data at boot without
    /// claiming the disk.
    pub async fn ensure_existing(&self) -> Result<Option<DataDiskReport>, StorageError> {
        let up = self.mounts.is_mounted(&self.config.raw_mount)?;
        if !up
            && classify(&self.disk.read_head(&self.config.device, HEAD_BYTES)?)
                != DiskContents::Known(Signature::Btrfs)
        {
            return Ok(None);
        }
        self.ensure().await.map(Some)
    }

    /// Formats the device if it is provably blank (or wiping is allowed);
    /// accepts an existing Btrfs; refuses anything else.
    async fn format_if_blank(&self) -> Result<bool, StorageError> {
        let device = &self.config.device;
        let head = self.disk.read_head(device, HEAD_BYTES)?;
        let force = match classify(&head) {
            DiskContents::Known(Signature::Btrfs) => return Ok(false),
            DiskContents::Blank => false,
            DiskContents::Known(_) | DiskContents::UnknownData { .. } if self.config.allow_wipe => {
                tracing::warn!(device = %device.display(), "wiping a non-blank data disk (allow_wipe is set)");
                true
            }
            DiskContents::Known(found) => {
                return Err(StorageError::RefusedKnown { device: device.clone(), found: found.name() });
            }
            DiskContents::UnknownData { first_nonzero } => {
                return Err(StorageError::RefusedUnknown { device: device.clone(), offset: first_nonzero });
            }
        };
        // Without -f, mkfs.btrfs itself refuses a device with a filesystem:
        // a second guard against a wrong classification.
        let mut args = vec!["-L".to_owned(), DATA_DISK_LABEL.to_owned()];
        if force {
            args.push("-f".to_owned());
        }
        args.push(device.display().to_string());
        let spec = ProcessSpec { program: self.config.mkfs.clone(), args, ..ProcessSpec::default() };
        let mkfs_error = |detail: String| StorageError::Mkfs { device: device.clone(), detail };
        let mut child = self.spawner.spawn(&spec).await.map_err(|e| mkfs_error(e.to_string()))?;
        let status = child.wait().await.map_err(|e| mkfs_error(e.to_string()))?;
        if !status.success() {
            return Err(mkfs_error(format!("exited with {status:?}")));
        }
        tracing::info!(device = %device.display(), "formatted the blank data disk as btrfs");
        Ok(true)
    }

    fn mount_raw(&self, report: &mut DataDiskReport) -> Result<(), StorageError> {
        let spec = MountSpec {
            source: self.config.device.display().to_string(),
            target: self.config.raw_mount.clone(),
            fstype: "btrfs".to_owned(),
            flags: MountFlags::default(),
            data: self.config.options.clone(),
        };
        self.mount(&spec, report)
    }

    fn mount_subvolume(&self, sub: &Subvolume, report: &mut DataDiskReport) -> Result<(), StorageError> {
        if self.disk.create_subvolume(&self.config.raw_mount, &sub.name)? == CreateOutcome::Created {
            report.created.push(sub.name.clone());
        }
        let spec = MountSpec {
            source: self.config.device.display().to_string(),
            target: sub.target.clone(),
            fstype: "btrfs".to_owned(),
            flags: MountFlags { noatime: true, ..MountFlags::default() },
            data: format!("{},subvol={}", self.config.options, sub.name),
        };
        self.mount(&spec, report)?;
        for dir in &sub.nocow_dirs {
            let path = sub.target.join(dir);
            self.files.create_dir_all(&path)?;
            self.disk.set_nocow(&path)?;
        }
        Ok(())
    }

    fn mount(&self, spec: &MountSpec, report: &mut DataDiskReport) -> Result<(), StorageError> {
        self.files.create_dir_all(&spec.target)?;
        if self.mounts.mount(spec)? == MountOutcome::Mounted {
            report.mounted.push(spec.target.clone());
        }
        Ok(())
    }
}

/// Resolves the data device: the configured one, else the reference's
/// fast path `/dev/arcboxhvc1` when present, else `/dev/vdb`.
pub fn data_device(configured: Option<&Path>, exists: impl Fn(&Path) -> bool) -> PathBuf {
    if let Some(device) = configured {
        return device.to_owned();
    }
    let hvc = Path::new("/dev/arcboxhvc1");
    if exists(hvc) { hvc.to_owned() } else { PathBuf::from("/dev/vdb") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDisk, FakeFiles, FakeMount, FakeProcesses};
    use crate::sys::ExitStatus;

    struct Rig {
        mounts: Arc<FakeMount>,
        spawner: Arc<FakeProcesses>,
        disk: Arc<FakeDisk>,
        data: DataDisk<FakeMount, FakeFiles, FakeProcesses, FakeDisk>,
    }

    fn rig(image: Vec<u8>, allow_wipe: bool) -> Rig {
        let mounts = Arc::new(FakeMount::new());
        let spawner = Arc::new(FakeProcesses::default());
        let disk = Arc::new(FakeDisk::with_image(image));
        let config = DataDiskConfig { allow_wipe, ..DataDiskConfig::default() };
        let data = DataDisk::new(
            Arc::clone(&mounts),
            Arc::new(FakeFiles::new()),
            Arc::clone(&spawner),
            Arc::clone(&disk),
            config,
        );
        Rig { mounts, spawner, disk, data }
    }

    fn ext4_image() -> Vec<u8> {
        let mut image = vec![0u8; 1 << 20];
        image[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        image
    }

    #[tokio::test]
    async fn a_lookup_at_boot_never_formats_and_mounts_only_our_filesystem() {
        let rig = rig(vec![0u8; 8 << 20], false);
        assert!(rig.data.ensure_existing().await.unwrap().is_none(), "a blank disk is left alone");
        assert!(rig.spawner.spawned().is_empty(), "no mkfs");
        assert!(rig.mounts.table().is_empty());
        rig.data.ensure().await.unwrap();
        let again = rig.data.ensure_existing().await.unwrap().expect("our disk, mounted");
        assert!(!again.formatted);
    }

    #[tokio::test]
    async fn a_blank_disk_is_formatted_labelled_and_laid_out() {
        let rig = rig(vec![0u8; 8 << 20], false);
        let report = rig.data.ensure().await.unwrap();
        assert!(report.formatted);
        let mkfs = &rig.spawner.spawned()[0];
        assert_eq!(mkfs.program, PathBuf::from("mkfs.btrfs"));
        assert_eq!(mkfs.args, ["-L", "arcbox-data", "/dev/vdb"], "no -f on a blank disk");
        assert_eq!(report.created, ["@docker", "@containerd", "@k3s", "@kubelet", "@cni", "@sandboxes"]);
        assert_eq!(report.mounted.len(), 7);
        let table = rig.mounts.table();
        let docker = table.iter().find(|m| m.target == Path::new("/var/lib/docker")).unwrap();
        assert_eq!(docker.fstype, "btrfs");
        assert!(
            rig.disk
                .nocow_dirs()
                .contains(&PathBuf::from("/var/lib/containerd/io.containerd.metadata.v1.bolt"))
        );
    }

    #[tokio::test]
    async fn an_ext4_disk_is_refused_and_never_touched() {
        let rig = rig(ext4_image(), false);
        let err = rig.data.ensure().await.unwrap_err();
        assert!(matches!(err, StorageError::RefusedKnown { found: "ext2/3/4 filesystem", .. }), "{err}");
        assert!(err.to_string().contains("/dev/vdb"), "{err}");
        assert!(rig.spawner.spawned().is_empty());
        assert!(rig.mounts.table().is_empty());
    }

    #[tokio::test]
    async fn unknown_data_is_refused() {
        let mut image = vec![0u8; 1 << 20];
        image[700_000] = 7;
        let err = rig(image, false).data.ensure().await.unwrap_err();
        assert!(matches!(err, StorageError::RefusedUnknown { offset: 700_000, .. }), "{err}");
    }

    #[tokio::test]
    async fn allow_wipe_formats_with_force() {
        let rig = rig(ext4_image(), true);
        assert!(rig.data.ensure().await.unwrap().formatted);
        assert_eq!(rig.spawner.spawned()[0].args, ["-L", "arcbox-data", "-f", "/dev/vdb"]);
    }

    #[tokio::test]
    async fn an_existing_btrfs_is_used_as_it_is() {
        let mut image = vec![0u8; 1 << 20];
        image[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        let rig = rig(image, false);
        assert!(!rig.data.ensure().await.unwrap().formatted);
        assert!(rig.spawner.spawned().is_empty());
    }

    #[tokio::test]
    async fn a_second_run_changes_nothing() {
        let rig = rig(vec![0u8; 1 << 20], false);
        rig.data.ensure().await.unwrap();
        let again = rig.data.ensure().await.unwrap();
        assert_eq!(again, DataDiskReport::default());
        assert_eq!(rig.spawner.spawned().len(), 1);
    }

    #[tokio::test]
    async fn a_failing_mkfs_is_reported() {
        let rig = rig(vec![0u8; 1 << 20], false);
        rig.spawner.script_exit("mkfs.btrfs", ExitStatus::Code(1));
        let err = rig.data.ensure().await.unwrap_err();
        assert!(matches!(err, StorageError::Mkfs { .. }), "{err}");
        assert!(rig.mounts.table().is_empty());
    }

    #[test]
    fn the_device_defaults_to_the_hvc_fast_path_then_vdb() {
        assert_eq!(data_device(Some(Path::new("/dev/vdc")), |_| true), PathBuf::from("/dev/vdc"));
        assert_eq!(
            data_device(None, |p| p == Path::new("/dev/arcboxhvc1")),
            PathBuf::from("/dev/arcboxhvc1")
        );
        assert_eq!(data_device(None, |_| false), PathBuf::from("/dev/vdb"));
    }
}
