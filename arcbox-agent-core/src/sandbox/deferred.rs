//! A backend made on its first use rather than at boot: a real backend's
//! constructor checks its runtime binary and makes its directories, which
//! belong on the data disk that the service brings up first (see
//! `SandboxStorage`). A construction that fails is answered as it failed
//! and tried again by the next request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use super::backend::{Launched, Recovered, SandboxBackend, SandboxError, SnapshotTaken};
use super::spec::{ProcessSpec, SandboxSpec, SnapshotKind};
use crate::sys::exec::SpawnedExec;

/// Makes the backend.
pub type MakeBackend = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn SandboxBackend>, SandboxError>> + Send>>
        + Send
        + Sync,
>;

/// A backend made on first use (see the module docs). Before it is made,
/// `validate` refuses only what no backend of `kind` honours (the
/// microVM fields); the made backend's `create` must validate fully, as
/// every backend here does.
pub struct DeferredBackend {
    kind: String,
    make: MakeBackend,
    made: OnceCell<Arc<dyn SandboxBackend>>,
}

impl DeferredBackend {
    /// A backend of `kind` (for messages, e.g. "OCI containers (crun)") that `make` makes.
    pub fn new(kind: impl Into<String>, make: MakeBackend) -> Self {
        Self { kind: kind.into(), make, made: OnceCell::new() }
    }

    async fn backend(&self) -> Result<&Arc<dyn SandboxBackend>, SandboxError> {
        self.made.get_or_try_init(|| (self.make)()).await
    }
}

#[async_trait::async_trait]
impl SandboxBackend for DeferredBackend {
    fn name(&self) -> String {
        match self.made.get() {
            Some(backend) => backend.name(),
            None => format!("{} (made on first use)", self.kind),
        }
    }

    fn validate(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        match self.made.get() {
            Some(backend) => backend.validate(spec),
            None => spec.refuse_vm_fields(&self.kind),
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Launched, SandboxError> {
        self.backend().await?.create(spec).await
    }

    async fn exec(&self, id: &str, process: &ProcessSpec) -> Result<SpawnedExec, SandboxError> {
        self.backend().await?.exec(id, process).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), SandboxError> {
        self.backend().await?.stop(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        self.backend().await?.remove(id).await
    }

    async fn checkpoint(&self, id: &str, snapshot_id: &str) -> Result<SnapshotTaken, SandboxError> {
        self.backend().await?.checkpoint(id, snapshot_id).await
    }

    async fn restore(
        &self,
        snapshot_id: &str,
        kind: SnapshotKind,
        spec: &SandboxSpec,
    ) -> Result<Launched, SandboxError> {
        self.backend().await?.restore(snapshot_id, kind, spec).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), SandboxError> {
        self.backend().await?.delete_snapshot(snapshot_id).await
    }

    async fn recover(&self, spec: &SandboxSpec) -> Recovered {
        match self.backend().await {
            Ok(backend) => backend.recover(spec).await,
            // Nothing can be known without the backend: keep the record
            // (stopped) rather than forget a sandbox that may still exist.
            Err(err) => {
                tracing::warn!(sandbox = %spec.id, error = %err, "cannot look for the sandbox: no backend");
                Recovered::Stopped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::fake::FakeSandboxBackend;
    use crate::sandbox::spec::test_spec as spec;

    #[tokio::test]
    async fn the_backend_is_made_once_on_first_use_and_a_failed_making_is_retried() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&attempts);
        let deferred = DeferredBackend::new(
            "fakes",
            Box::new(move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    if n < 2 {
                        Err(SandboxError::Unavailable("crun is not installed".into()))
                    } else {
                        Ok(FakeSandboxBackend::new() as Arc<dyn SandboxBackend>)
                    }
                })
            }),
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 0, "nothing is made at construction");
        assert!(deferred.name().contains("made on first use"));
        let mut vm = spec("vm");
        vm.vm.boot_args = "quiet".into();
        assert_eq!(deferred.validate(&vm).unwrap_err().code(), 400);
        let err = deferred.create(&spec("a")).await.err().unwrap();
        assert_eq!((err.code(), err.to_string().as_str()), (503, "crun is not installed"));
        assert!(matches!(deferred.recover(&spec("old")).await, Recovered::Stopped), "kept, not forgotten");
        deferred.create(&spec("a")).await.expect("made on the retry");
        deferred.stop("a", Duration::ZERO).await.unwrap();
        deferred.remove("a").await.unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert_eq!(deferred.name(), "fake (in memory)");
    }
}
