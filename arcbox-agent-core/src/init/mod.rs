//! System init as an explicit, ordered plan of named steps.
//!
//! The reference's `init_system()` was a list of fire-and-forget calls
//! that logged warnings. Here the plan is data ([`Step`]s built by
//! [`standard_plan`]) and one runner executes it through the OS traits, so
//! the same plan runs on fakes in unit tests, over a scratch root in a
//! namespace in root tests, and for real as PID 1. Every step is
//! idempotent and reports ok (it changed something), skipped (nothing to
//! do, with why) or failed (with why); the runner never stops early and
//! never panics, because PID 1 must go on. Paths are guest paths, joined
//! under a configurable root.

mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use plan::{GROUP, PASSWD, docker_daemon_json, resolv_conf, standard_plan};

use crate::boot::{BootRecorder, StepOutcome};
use crate::config::{ShareConfig, TmpfsPolicy};
use crate::modules::{ModuleError, ModuleIndex, load_modules, parse_proc_modules};
use crate::sys::{
    CreateOutcome, FileOps, LinkOutcome, ModuleLoader, MountOps, MountOutcome, MountSpec, NetworkOps,
    ResourceLimits, SysError, WriteOutcome,
};

/// When a step runs relative to the RPC listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Kernel filesystems, before config and logging (they need /proc, /dev).
    Kernel,
    /// Before the listener binds: fast steps and the modules it needs.
    Early,
    /// After the listener is up: slow steps.
    Late,
}

/// Which link to bring up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `lo`.
    Loopback,
    /// The first real NIC (see [`primary_interface`]).
    Primary,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Mount (mkdir first) unless already mounted.
    Mount(MountSpec),
    /// Mount unless already mounted or `present` exists.
    MountUnless {
        /// The mount.
        spec: MountSpec,
        /// A path whose existence means "already there".
        present: PathBuf,
    },
    /// A tmpfs over a root directory, subject to the policy.
    Tmpfs {
        /// The mount.
        spec: MountSpec,
        /// When to do it.
        policy: TmpfsPolicy,
    },
    /// A file with fixed contents; `keep_existing` leaves a present file alone.
    WriteFile {
        /// Guest path.
        path: PathBuf,
        /// Contents.
        contents: String,
        /// Mode of a new file.
        mode: u32,
        /// Do not replace an existing file.
        keep_existing: bool,
    },
    /// /etc/hosts for the current hostname.
    WriteHosts,
    /// `link` → `target`, when `target` exists.
    Symlink {
        /// Guest path the link points to.
        target: PathBuf,
        /// Guest path of the link.
        link: PathBuf,
    },
    /// Directories.
    Mkdirs(Vec<PathBuf>),
    /// A sysctl (`a.b.c` → /proc/sys/a/b/c).
    Sysctl {
        /// Dotted key.
        key: String,
        /// Value.
        value: String,
    },
    /// RLIMIT_NOFILE (and fs.nr_open when lower).
    Nofile(u64),
    /// Kernel modules and their dependencies.
    Modules(Vec<String>),
    /// Set a link up.
    LinkUp(Link),
    /// A VirtioFS share.
    Share(ShareConfig),
    /// The host share's layout (bin/, runtime/bin/, log/), see [`crate::share`];
    /// skipped when the share is optional and absent.
    ShareLayout(ShareConfig),
}

/// One named step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Name shown in the boot report.
    pub name: String,
    /// When it runs.
    pub phase: Phase,
    /// A failure is reported to the host as critical.
    pub critical: bool,
    /// What it does.
    pub action: Action,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// ok / skipped / failed with why.
    pub outcome: StepOutcome,
    /// How long it took.
    pub duration: Duration,
    /// Whether the step is critical.
    pub critical: bool,
}

impl StepReport {
    /// Records this report in the boot report.
    pub fn record(&self, boot: &BootRecorder) {
        boot.record_step(&self.name, &self.outcome, self.duration, self.critical);
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// An OS operation failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// Kernel modules could not be resolved or loaded.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// The host share is not what the reference lays out.
    #[error(transparent)]
    ShareLayout(#[from] crate::share::ShareError),
    /// A required VirtioFS share could not be mounted.
    #[error("required share {tag} at {path}: {}", share_failure(tag, source))]
    Share {
        /// The tag.
        tag: String,
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: SysError,
    },
}

/// A step that did not fail: it changed something, or had nothing to do.
enum Done {
    Changed,
    Skipped(String),
}

/// The OS capabilities the plan runs on. Trait objects, because the plan
/// is data dispatched at run time and one runner serves real and fake
/// systems; they are built once where the binary wires things up.
#[derive(Clone)]
pub struct InitOps {
    /// Mounts.
    pub mount: Arc<dyn MountOps>,
    /// Files, sysctls.
    pub files: Arc<dyn FileOps>,
    /// Links (netlink).
    pub network: Arc<dyn NetworkOps>,
    /// Modules.
    pub modules: Arc<dyn ModuleLoader>,
    /// Resource limits.
    pub limits: Arc<dyn ResourceLimits>,
}

#[cfg(target_os = "linux")]
impl InitOps {
    /// The real system.
    pub fn linux() -> Self {
        use crate::sys::linux::{LinuxFiles, LinuxLimits, LinuxModules, LinuxMount, LinuxNetwork};
        Self {
            mount: Arc::new(LinuxMount),
            files: Arc::new(LinuxFiles),
            network: Arc::new(LinuxNetwork),
            modules: Arc::new(LinuxModules),
            limits: Arc::new(LinuxLimits),
        }
    }
}

/// The first real NIC in sorted order: not `lo`, `dummy*`, `veth*`,
/// `br-*`, `docker*` (the reference's rule).
pub fn primary_interface<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    names
        .into_iter()
        .filter(|n| *n != "lo" && !["dummy", "veth", "br-", "docker"].iter().any(|p| n.starts_with(p)))
        .min()
        .map(str::to_owned)
}

/// Executes steps through [`InitOps`] under a root directory.
#[derive(Clone)]
pub struct InitRunner {
    ops: InitOps,
    root: PathBuf,
}

impl InitRunner {
    /// A runner over `ops`; every guest path is joined under `root`.
    pub fn new(ops: InitOps, root: impl Into<PathBuf>) -> Self {
        Self { ops, root: root.into() }
    }

    fn at(&self, guest: &Path) -> PathBuf {
        self.root.join(guest.strip_prefix("/").unwrap_or(guest))
    }

    /// Runs the steps of `phase` in order, logging each.
    pub async fn run_phase(&self, plan: &[Step], phase: Phase) -> Vec<StepReport> {
        let mut reports = Vec::new();
        for step in plan.iter().filter(|s| s.phase == phase) {
            reports.push(self.run_step(step).await);
        }
        reports
    }

    /// Runs one step; never fails, the outcome says how it went.
    pub async fn run_step(&self, step: &Step) -> StepReport {
        let started = Instant::now();
        let outcome = match self.execute(&step.action).await {
            Ok(Done::Changed) => StepOutcome::Ok,
            Ok(Done::Skipped(why)) => StepOutcome::Skipped(why),
            Err(err) => StepOutcome::Failed(err.to_string()),
        };
        let duration = started.elapsed();
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        match &outcome {
            StepOutcome::Failed(why) if step.critical => {
                tracing::error!(step = step.name, reason = why, us, "critical init step failed");
            }
            StepOutcome::Failed(why) => {
                tracing::warn!(step = step.name, reason = why, us, "init step failed")
            }
            other => tracing::info!(
                step = step.name,
                outcome = other.name(),
                reason = other.reason(),
                us,
                "init step"
            ),
        }
        StepReport { name: step.name.clone(), outcome, duration, critical: step.critical }
    }

    async fn execute(&self, action: &Action) -> Result<Done, InitError> {
        match action {
            Action::Mount(spec) => self.mount(spec),
            Action::MountUnless { spec, present } => {
                if self.ops.files.exists(&self.at(present)) {
                    return Ok(Done::Skipped(format!("{} exists", present.display())));
                }
                self.mount(spec)
            }
            Action::Tmpfs { spec, policy } => self.tmpfs(spec, *policy),
            Action::WriteFile { path, contents, mode, keep_existing } => {
                self.write(path, contents.as_bytes(), *mode, *keep_existing)
            }
            Action::WriteHosts => {
                let hostname = self
                    .ops
                    .files
                    .read_to_string(&self.at(Path::new("/proc/sys/kernel/hostname")))
                    .map(|h| h.trim().to_owned())
                    .ok()
                    .filter(|h| !h.is_empty() && h != "(none)")
                    .unwrap_or_else(|| "arcbox-vm".into());
                let hosts = format!("127.0.0.1\tlocalhost\n::1\t\tlocalhost\n127.0.1.1\t{hostname}\n");
                self.write(Path::new("/etc/hosts"), hosts.as_bytes(), 0o644, false)
            }
            Action::Symlink { target, link } => {
                if !self.ops.files.exists(&self.at(target)) {
                    return Ok(Done::Skipped(format!("{} absent", target.display())));
                }
                let link = self.at(link);
                if let Some(dir) = link.parent() {
                    self.ops.files.create_dir_all(dir)?;
                }
                Ok(match self.ops.files.symlink(target, &link)? {
                    CreateOutcome::Created => Done::Changed,
                    CreateOutcome::Existed => Done::Skipped("already linked".into()),
                })
            }
            Action::Mkdirs(paths) => {
                let mut created = 0;
                for path in paths {
                    if self.ops.files.create_dir_all(&self.at(path))? == CreateOutcome::Created {
                        created += 1;
                    }
                }
                Ok(if created > 0 { Done::Changed } else { Done::Skipped("all exist".into()) })
            }
            Action::Sysctl { key, value } => {
                let path = Path::new("/proc/sys").join(key.replace('.', "/"));
                let line = format!("{value}\n");
                Ok(match self.ops.files.write_file(&self.at(&path), line.as_bytes(), 0o644)? {
                    WriteOutcome::Written => Done::Changed,
                    WriteOutcome::Unchanged => Done::Skipped(format!("already {value}")),
                })
            }
            Action::Nofile(limit) => self.nofile(*limit),
            Action::Modules(names) => self.modules(names),
            Action::LinkUp(link) => self.link_up(*link).await,
            Action::Share(share) => self.share(share),
            Action::ShareLayout(share) => {
                let checked = crate::share::check_layout(
                    self.ops.files.as_ref(),
                    self.ops.mount.as_ref(),
                    &self.at(&share.path),
                );
                match checked {
                    // An optional share that is absent is skipped, as its mount step is.
                    Err(crate::share::ShareError::NotMounted { .. }) if !share.required => {
                        Ok(Done::Skipped("the optional share is not mounted".into()))
                    }
                    checked => checked.map(|()| Done::Changed).map_err(Into::into),
                }
            }
        }
    }

    fn mount(&self, spec: &MountSpec) -> Result<Done, InitError> {
        let target = self.at(&spec.target);
        self.ops.files.create_dir_all(&target)?;
        let spec = MountSpec { target, ..spec.clone() };
        Ok(match self.ops.mount.mount(&spec)? {
            MountOutcome::Mounted => Done::Changed,
            MountOutcome::AlreadyMounted => Done::Skipped("already mounted".into()),
        })
    }

    fn tmpfs(&self, spec: &MountSpec, policy: TmpfsPolicy) -> Result<Done, InitError> {
        match policy {
            TmpfsPolicy::Never => return Ok(Done::Skipped("tmpfs policy is never".into())),
            TmpfsPolicy::Auto if !self.ops.files.is_read_only(&self.root)? => {
                if self.ops.mount.is_mounted(&self.at(&spec.target))? {
                    return Ok(Done::Skipped("already mounted".into()));
                }
                return Ok(Done::Skipped("root filesystem is writable".into()));
            }
            TmpfsPolicy::Auto | TmpfsPolicy::Always => {}
        }
        let target = self.at(&spec.target);
        // On a read-only root the mount point must exist already.
        if !self.ops.files.exists(&target) {
            self.ops.files.create_dir_all(&target)?;
        }
        let spec = MountSpec { target, ..spec.clone() };
        Ok(match self.ops.mount.mount(&spec)? {
            MountOutcome::Mounted => Done::Changed,
            MountOutcome::AlreadyMounted => Done::Skipped("already mounted".into()),
        })
    }

    fn write(&self, path: &Path, contents: &[u8], mode: u32, keep_existing: bool) -> Result<Done, InitError> {
        let path = self.at(path);
        if keep_existing && self.ops.files.exists(&path) {
            return Ok(Done::Skipped("exists; left as is".into()));
        }
        if let Some(dir) = path.parent() {
            self.ops.files.create_dir_all(dir)?;
        }
        Ok(match self.ops.files.write_file(&path, contents, mode)? {
            WriteOutcome::Written => Done::Changed,
            WriteOutcome::Unchanged => Done::Skipped("unchanged".into()),
        })
    }

    fn nofile(&self, limit: u64) -> Result<Done, InitError> {
        let mut changed = false;
        let nr_open = self.at(Path::new("/proc/sys/fs/nr_open"));
        let current: u64 = self.ops.files.read_to_string(&nr_open)?.trim().parse().unwrap_or(0);
        if current < limit {
            self.ops.files.write_file(&nr_open, format!("{limit}\n").as_bytes(), 0o644)?;
            changed = true;
        }
        let (soft, hard) = self.ops.limits.nofile()?;
        if soft < limit || hard < limit {
            self.ops.limits.set_nofile(limit, hard.max(limit))?;
            changed = true;
        }
        Ok(if changed { Done::Changed } else { Done::Skipped(format!("already {limit}")) })
    }

    fn modules(&self, names: &[String]) -> Result<Done, InitError> {
        let files = self.ops.files.as_ref();
        let loaded = match files.read_to_string(&self.at(Path::new("/proc/modules"))) {
            Ok(text) => parse_proc_modules(&text),
            Err(_) => return Ok(Done::Skipped("no /proc/modules: kernel without module support".into())),
        };
        let release = files.read_to_string(&self.at(Path::new("/proc/sys/kernel/osrelease")))?;
        let dir = self.at(&Path::new("/lib/modules").join(release.trim()));
        if !files.exists(&dir.join("modules.dep")) {
            return Ok(Done::Skipped(format!("no modules.dep in {}; assuming built in", dir.display())));
        }
        let index = ModuleIndex::read(files, &dir)?;
        let report = load_modules(&index, self.ops.modules.as_ref(), names, &loaded)?;
        if report.loaded.is_empty() {
            return Ok(Done::Skipped(format!("present: {}", report.present.join(","))));
        }
        tracing::info!(loaded = report.loaded.join(","), "kernel modules loaded");
        Ok(Done::Changed)
    }

    async fn link_up(&self, link: Link) -> Result<Done, InitError> {
        let name = match link {
            Link::Loopback => "lo".to_owned(),
            Link::Primary => {
                let links = self.ops.network.links().await?;
                match primary_interface(links.iter().map(|l| l.name.as_str())) {
                    Some(name) => name,
                    None => return Ok(Done::Skipped("no NIC".into())),
                }
            }
        };
        Ok(match self.ops.network.set_link_up(&name).await? {
            LinkOutcome::BroughtUp => Done::Changed,
            LinkOutcome::AlreadyUp => Done::Skipped(format!("{name} already up")),
        })
    }

    /// Mounts a VirtioFS share. One a trampoline mounted already (the
    /// reference boots the agent from `/arcbox`) is there, so `ok`. A
    /// device without a DAX window refuses `dax=always` with EINVAL (QEMU's
    /// vhost-user-fs has none): the share is then mounted without DAX.
    fn share(&self, share: &ShareConfig) -> Result<Done, InitError> {
        let mut spec = MountSpec {
            source: share.tag.clone(),
            target: share.path.clone(),
            fstype: "virtiofs".into(),
            flags: Default::default(),
            data: share.options.clone(),
        };
        let mut result = self.mount(&spec);
        if is_einval(&result) && spec.data.contains("dax") {
            spec.data = without_dax(&spec.data);
            result = self.mount(&spec);
            if result.is_ok() {
                tracing::info!(tag = share.tag, "share mounted without DAX: the device has no DAX window");
            }
        }
        match result {
            Ok(_) => Ok(Done::Changed),
            Err(InitError::Sys(source)) if share.required => {
                Err(InitError::Share { tag: share.tag.clone(), path: share.path.clone(), source })
            }
            Err(InitError::Sys(source)) => {
                Ok(Done::Skipped(format!("optional share absent: {}", share_failure(&share.tag, &source))))
            }
            Err(err) => Err(err),
        }
    }
}

fn is_einval(result: &Result<Done, InitError>) -> bool {
    matches!(result, Err(InitError::Sys(SysError::Io { source, .. })) if source.raw_os_error() == Some(libc::EINVAL))
}

/// Mount data less its `dax` options.
fn without_dax(data: &str) -> String {
    data.split(',').filter(|o| !o.is_empty() && !o.starts_with("dax")).collect::<Vec<_>>().join(",")
}

/// A share's mount failure in words: virtiofs answers EINVAL for a tag
/// no device carries, which alone says little.
fn share_failure(tag: &str, source: &SysError) -> String {
    match source {
        SysError::Io { source: err, .. } if err.raw_os_error() == Some(libc::EINVAL) => {
            format!("no virtio-fs device tagged {tag} ({source})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
