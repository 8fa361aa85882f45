//! [`RoutedExecSpawner`]: one spawner for the exec service that starts a
//! request with a container through dockerd and any other in the guest.

use std::path::Path;
use std::sync::Arc;

use crate::sys::exec::{ExecCommand, ExecSpawner, SpawnError, SpawnedExec};

/// Routes by [`ExecCommand::container`]: `containers` for those that have
/// one, `local` for the rest and for users, groups and cgroups (a
/// container exec has none of its own).
pub struct RoutedExecSpawner<L, C> {
    local: Arc<L>,
    containers: Arc<C>,
}

impl<L: ExecSpawner, C: ExecSpawner> RoutedExecSpawner<L, C> {
    /// Guest processes by `local`, container ones by `containers`.
    pub fn new(local: Arc<L>, containers: Arc<C>) -> Self {
        Self { local, containers }
    }
}

impl<L: ExecSpawner, C: ExecSpawner> ExecSpawner for RoutedExecSpawner<L, C> {
    async fn spawn(&self, command: &ExecCommand) -> Result<SpawnedExec, SpawnError> {
        if command.container.is_some() {
            self.containers.spawn(command).await
        } else {
            self.local.spawn(command).await
        }
    }

    fn lookup_user(&self, name: &str) -> Result<(u32, u32, Vec<u32>), SpawnError> {
        self.local.lookup_user(name)
    }

    fn lookup_group(&self, name: &str) -> Result<u32, SpawnError> {
        self.local.lookup_group(name)
    }

    fn limit_memory(&self, dir: &Path, limit: u64) -> Result<(), SpawnError> {
        self.local.limit_memory(dir, limit)
    }

    fn oom_kills(&self, dir: &Path) -> u64 {
        self.local.oom_kills(dir)
    }

    fn remove_cgroup(&self, dir: &Path) {
        self.local.remove_cgroup(dir);
    }
}

#[cfg(all(test, feature = "fake"))]
mod tests {
    use super::*;
    use crate::fake::FakeExecSpawner;
    use crate::sys::exec::ContainerTarget;

    #[tokio::test]
    async fn a_container_request_never_runs_in_the_guest() {
        // Both sides are guest-only spawners: the container side refuses,
        // which shows the request went there.
        let routed =
            RoutedExecSpawner::new(Arc::new(FakeExecSpawner::new()), Arc::new(FakeExecSpawner::new()));
        let local = ExecCommand { argv: vec!["true".into()], ..ExecCommand::default() };
        assert!(routed.spawn(&local).await.is_ok());
        let target = ContainerTarget { container: "web".into(), user: String::new() };
        let inside = ExecCommand { container: Some(target), ..local };
        assert!(matches!(routed.spawn(&inside).await, Err(SpawnError::Unsupported(_))));
        assert_eq!(routed.lookup_user("nobody").unwrap().0, 65534);
    }
}
