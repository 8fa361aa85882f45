//! The data disk for real: loop devices, mkfs.btrfs, Btrfs ioctls and
//! mounts, inside a private mount namespace (each test re-runs itself
//! under `unshare --mount`, see `root_ns`). Needs root, btrfs-progs,
//! e2fsprogs and losetup.

mod root_ns;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use arcbox_agent_core::reaper::Reaper;
use arcbox_agent_core::storage::{DataDisk, DataDiskConfig, DataDiskReport, StorageError, Subvolume};
use arcbox_agent_core::sys::linux::{LinuxChildReaping, LinuxDisk, LinuxFiles, LinuxMount, LinuxSpawner};
use root_ns::Namespaces;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Mount,
        &["losetup", "mkfs.btrfs", "mkfs.ext4", "lsattr"],
        root_ns::bodies![
            a_blank_device_is_formatted_mounted_with_subvolumes_and_kept_on_the_next_boot,
            a_device_holding_ext4_is_refused_and_left_byte_identical,
            a_device_with_unrecognised_data_is_refused,
        ],
    )
}

/// A sparse file attached to a loop device; detached on drop.
struct LoopDevice {
    device: PathBuf,
    backing: PathBuf,
}

impl LoopDevice {
    fn new(dir: &Path, size_mib: u64) -> Self {
        let backing = dir.join("disk.img");
        std::fs::File::create(&backing).unwrap().set_len(size_mib << 20).unwrap();
        let out = Command::new("losetup").args(["--find", "--show"]).arg(&backing).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let device = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Self { device, backing }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn layout(root: &Path, device: &Path) -> DataDiskConfig {
    let defaults = DataDiskConfig::default();
    DataDiskConfig {
        device: device.to_owned(),
        raw_mount: root.join("run/arcbox/data"),
        subvolumes: defaults
            .subvolumes
            .iter()
            .map(|s| Subvolume { target: root.join(s.target.strip_prefix("/").unwrap()), ..s.clone() })
            .collect(),
        ..defaults
    }
}

/// Runs `DataDisk::ensure` with the real spawner and its reaper, as the agent does.
fn ensure(config: &DataDiskConfig) -> Result<DataDiskReport, StorageError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let reaper = Reaper::new(LinuxChildReaping);
        let stop = CancellationToken::new();
        let reaping = tokio::spawn(Arc::clone(&reaper).run(stop.clone()));
        let disk = DataDisk::new(
            Arc::new(LinuxMount),
            Arc::new(LinuxFiles),
            Arc::new(LinuxSpawner::new(reaper)),
            Arc::new(LinuxDisk),
            config.clone(),
        );
        let result = disk.ensure().await;
        stop.cancel();
        let _ = reaping.await;
        result
    })
}

/// (fstype, mount options, super options) of the mount at `target`.
fn mountinfo(target: &Path) -> Option<(String, String, String)> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        if Path::new(fields[4]) != target {
            return None;
        }
        let right: Vec<&str> = right.split(' ').collect();
        Some((right[0].to_owned(), fields[5].to_owned(), right.get(2).unwrap_or(&"").to_string()))
    })
}

fn unmount_all(config: &DataDiskConfig) {
    for sub in &config.subvolumes {
        nix::mount::umount(&sub.target).unwrap();
    }
    nix::mount::umount(&config.raw_mount).unwrap();
}

fn file_digest(path: &Path) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(path).unwrap().hash(&mut h);
    h.finish()
}

fn a_blank_device_is_formatted_mounted_with_subvolumes_and_kept_on_the_next_boot() {
    let dir = tempfile::tempdir().unwrap();
    let dev = LoopDevice::new(dir.path(), 320);
    let config = layout(&dir.path().join("root"), &dev.device);

    let first = ensure(&config).unwrap();
    assert!(first.formatted);
    assert_eq!(first.created, ["@docker", "@containerd", "@k3s", "@kubelet", "@cni", "@sandboxes"]);

    let (fstype, _, raw_super) = mountinfo(&config.raw_mount).expect("raw btrfs not mounted");
    assert_eq!(fstype, "btrfs");
    assert!(raw_super.contains("compress=zstd:1"), "{raw_super}");
    for sub in &config.subvolumes {
        let (fstype, opts, sup) =
            mountinfo(&sub.target).unwrap_or_else(|| panic!("{} not mounted", sub.name));
        assert_eq!(fstype, "btrfs");
        assert!(opts.split(',').any(|o| o == "noatime"), "{}: {opts}", sub.name);
        assert!(sup.contains("compress=zstd:1") && sup.contains("space_cache=v2"), "{}: {sup}", sub.name);
        assert!(sup.contains(&format!("subvol=/{}", sub.name)), "{}: {sup}", sub.name);
    }
    let bolt = config.subvolumes[1].target.join("io.containerd.metadata.v1.bolt");
    let lsattr = Command::new("lsattr").arg("-d").arg(&bolt).output().unwrap();
    let attrs = String::from_utf8_lossy(&lsattr.stdout);
    assert!(attrs.split_whitespace().next().unwrap_or("").contains('C'), "NOCOW missing: {attrs}");

    let marker = config.subvolumes[0].target.join("image-layer");
    std::fs::write(&marker, b"user data").unwrap();
    unmount_all(&config);

    // Second boot on the same disk: nothing formatted, nothing lost.
    let second = ensure(&config).unwrap();
    assert!(!second.formatted);
    assert!(second.created.is_empty());
    assert_eq!(std::fs::read(&marker).unwrap(), b"user data");
    // A third call while everything is mounted changes nothing.
    assert_eq!(ensure(&config).unwrap(), DataDiskReport::default());
    unmount_all(&config);
}

fn a_device_holding_ext4_is_refused_and_left_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let dev = LoopDevice::new(dir.path(), 64);
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dev.device).status().unwrap();
    assert!(mkfs.success());
    let before = file_digest(&dev.backing);
    let config = layout(&dir.path().join("root"), &dev.device);
    let err = ensure(&config).unwrap_err();
    assert!(matches!(err, StorageError::RefusedKnown { found: "ext2/3/4 filesystem", .. }), "{err}");
    assert!(mountinfo(&config.raw_mount).is_none());
    assert_eq!(file_digest(&dev.backing), before, "the ext4 device was modified");
}

fn a_device_with_unrecognised_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = LoopDevice::new(dir.path(), 16);
    {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let mut f = std::fs::OpenOptions::new().write(true).open(&dev.backing).unwrap();
        f.seek(SeekFrom::Start(2 << 20)).unwrap();
        f.write_all(b"somebody's bytes").unwrap();
    }
    let before = file_digest(&dev.backing);
    let err = ensure(&layout(&dir.path().join("root"), &dev.device)).unwrap_err();
    assert!(matches!(err, StorageError::RefusedUnknown { offset, .. } if offset == 2 << 20), "{err}");
    assert_eq!(file_digest(&dev.backing), before);
}
