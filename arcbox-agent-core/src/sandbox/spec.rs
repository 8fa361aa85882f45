//! What a sandbox and a sandbox process are made of, as domain types: the
//! wire's `sandbox.v1` messages are parsed into these once (see
//! `rpc::handlers::sandbox`), so backends never see protobuf.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a sandbox's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsSource {
    /// A directory tree in the guest, copied (or snapshotted) for the sandbox.
    Directory(PathBuf),
    /// A filesystem image file (ext4, Btrfs, squashfs, EROFS) in the guest.
    ImageFile(PathBuf),
    /// An image already in the guest's containerd, by reference
    /// (e.g. `docker.io/library/busybox:latest`).
    Image(String),
}

/// Resource limits (`sandbox.v1.ResourceLimits`); zero means "no limit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs the sandbox may use at once (cgroup `cpu.max`).
    pub vcpus: u32,
    /// Memory in MiB (cgroup `memory.max`).
    pub memory_mib: u64,
}

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// The guest path.
    pub source: PathBuf,
    /// The path inside the sandbox.
    pub target: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

/// A sandbox's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Only a loopback interface.
    #[default]
    None,
    /// Its own interface on the sandbox bridge, with an address from the
    /// sandbox subnet (the reference's `tap`, a TAP device for a microVM).
    Tap,
}

impl NetworkMode {
    /// The wire name (`sandbox.v1.NetworkSpec.mode`).
    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Tap => "tap",
        }
    }
}

/// A sandbox to make, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Its id: also its DNS name and the name of everything it owns.
    pub id: String,
    /// Free-form labels, matched by List, Events and ListSnapshots filters.
    pub labels: BTreeMap<String, String>,
    /// Its root filesystem.
    pub rootfs: RootfsSource,
    /// Its limits.
    pub limits: Limits,
    /// Its main process; `None`: an idle init that keeps it running for
    /// Run and Exec.
    pub init: Option<ProcessSpec>,
    /// Extra mounts.
    pub mounts: Vec<MountSpec>,
    /// Its network.
    pub network: NetworkMode,
    /// Stopped and removed this long after it was created.
    pub ttl: Option<Duration>,
    /// Fields only a microVM backend can use; kept so that a backend can
    /// refuse them by name rather than ignore them.
    pub vm: VmOnly,
}

/// Request fields that describe a microVM (the reference's Firecracker
/// backend); an isolation backend that shares the guest's kernel refuses
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmOnly {
    /// A kernel image path.
    pub kernel: String,
    /// The kernel command line.
    pub boot_args: String,
    /// An SSH key to install (the reference's field 15).
    pub ssh_public_key: Option<String>,
}

/// A process to start in a sandbox (its init, a Run or an Exec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment, added to the sandbox's base (`PATH`, `HOME`, `TERM`).
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (empty: `/`).
    pub cwd: String,
    /// `uid`, `uid:gid`, `name` or `name:group` (empty: root).
    pub user: String,
    /// A terminal of this size instead of pipes.
    pub tty: Option<TtySize>,
    /// Whether the caller writes stdin (else it reads /dev/null).
    pub stdin: bool,
    /// Killed after this long.
    pub timeout: Option<Duration>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Default for TtySize {
    fn default() -> Self {
        Self { rows: 24, cols: 80 }
    }
}

/// A sandbox's address on the sandbox network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNetwork {
    /// Its IPv4 address ("" with no network).
    pub ip_address: String,
    /// The bridge's address, its default route.
    pub gateway: String,
    /// The host-side interface name (a veth here, a TAP for a microVM).
    pub tap_name: String,
}

/// How a checkpoint was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// The root filesystem only: a restore starts the sandbox afresh.
    Filesystem,
    /// The root filesystem and the processes' memory (CRIU): a restore
    /// continues the processes where they were.
    Processes,
}

impl SnapshotKind {
    /// The name reported in snapshot labels and events.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotKind::Filesystem => "filesystem",
            SnapshotKind::Processes => "processes",
        }
    }
}

impl SandboxSpec {
    /// Refuses the microVM-only fields, for backends that share the
    /// guest's kernel (`backend` names it in the message).
    pub fn refuse_vm_fields(&self, backend: &str) -> Result<(), super::SandboxError> {
        let set = [
            ("kernel", !self.vm.kernel.is_empty()),
            ("boot_args", !self.vm.boot_args.is_empty()),
            ("ssh_public_key", self.vm.ssh_public_key.as_deref().is_some_and(|key| !key.is_empty())),
        ];
        match set.iter().find(|(_, is_set)| *is_set) {
            Some((field, _)) => Err(super::SandboxError::Invalid(format!(
                "{field} is a microVM field; this agent's sandbox backend is {backend}, which shares the guest's kernel"
            ))),
            None => Ok(()),
        }
    }
}

/// Whether `labels` holds every pair of `filter`.
pub fn labels_match(labels: &BTreeMap<String, String>, filter: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// Whether `id` is a usable sandbox or snapshot id: it names directories,
/// cgroups, interfaces and DNS records, so letters, digits, `-`, `_` and
/// `.`, at most 64 bytes, not starting with `.` or `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A sandbox of the root filesystem `/srv/rootfs` with nothing else set, for tests.
#[cfg(test)]
pub(crate) fn test_spec(id: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        labels: BTreeMap::new(),
        rootfs: RootfsSource::Directory("/srv/rootfs".into()),
        limits: Limits::default(),
        init: None,
        mounts: Vec::new(),
        network: NetworkMode::None,
        ttl: None,
        vm: VmOnly::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_escape_a_directory_or_an_interface_name_are_refused() {
        for good in ["web", "box-1", "a.b_c", "X9"] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", ".", "..", "-x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_label_filter_needs_every_pair() {
        let labels: BTreeMap<_, _> =
            [("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())].into();
        assert!(labels_match(&labels, &BTreeMap::new()));
        assert!(labels_match(&labels, &[("a".to_owned(), "1".to_owned())].into()));
        assert!(!labels_match(&labels, &[("a".to_owned(), "2".to_owned())].into()));
        assert!(!labels_match(&labels, &[("c".to_owned(), "1".to_owned())].into()));
    }
}
