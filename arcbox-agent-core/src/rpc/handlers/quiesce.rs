//! FsFreeze, FsThaw and FsFreezeStatus over a [`Quiescer`], and
//! [`WhileThawed`]: the decorator that refuses a request while the
//! filesystems are frozen instead of letting it hang on them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::proto::agent::{
    FrozenFilesystem, FsFreezeRequest, FsFreezeResponse, FsFreezeStatusRequest, FsFreezeStatusResponse,
    FsThawRequest, FsThawResponse,
};
use crate::protocol::{ErrorCode, MessageType};
use crate::quiesce::{
    FreezeGate, FreezeOptions, QuiesceError, Quiescer, RuntimeDaemons, Skipped, daemons_to_pause,
};
use crate::rpc::{
    HandlerError, RequestContext, Responder, Router, RpcError, Session, SessionHandler, StreamingHandler,
    UnaryHandler,
};
use crate::sys::{FsFreezer, MountedFs};

/// Registers the three freeze requests. `runtimes` are the daemons paused
/// when a freeze asks for it.
pub fn register_quiesce<F: FsFreezer>(
    router: &mut Router,
    quiescer: Quiescer<F>,
    runtimes: Vec<Arc<dyn RuntimeDaemons>>,
) {
    router
        .unary(MessageType::FsFreezeRequest, Freeze { quiescer: quiescer.clone(), runtimes })
        .unary(MessageType::FsThawRequest, Thaw(quiescer.clone()))
        .unary(MessageType::FsFreezeStatusRequest, Status(quiescer));
}

/// Wraps a handler so that it is refused (503, saying how to end the
/// freeze) while the filesystems are frozen or freezing; otherwise the
/// inner handler runs. Applied at registration to every request that
/// writes to a disk filesystem.
pub struct WhileThawed<H> {
    inner: H,
    gate: FreezeGate,
}

impl<H> WhileThawed<H> {
    /// `inner`, refused while `gate` is frozen.
    pub fn new(gate: &FreezeGate, inner: H) -> Self {
        Self { inner, gate: gate.clone() }
    }

    fn admit(&self, ctx: &RequestContext<'_>) -> Result<(), RpcError> {
        self.gate.admit().map_err(|refusal| {
            let name = MessageType::from_u32(ctx.msg_type).map(|t| t.name()).unwrap_or("request");
            tracing::info!(request = name, "refused while frozen");
            RpcError::new(ErrorCode::UNAVAILABLE, format!("{name} {refusal}"))
        })
    }
}

impl<H: UnaryHandler> UnaryHandler for WhileThawed<H> {
    type Request = H::Request;
    type Response = H::Response;

    async fn handle(&self, ctx: RequestContext<'_>, request: H::Request) -> Result<H::Response, RpcError> {
        self.admit(&ctx)?;
        self.inner.handle(ctx, request).await
    }
}

impl<H: StreamingHandler> StreamingHandler for WhileThawed<H> {
    type Request = H::Request;

    async fn handle<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        request: H::Request,
        out: &'a mut Responder<'_>,
    ) -> Result<(), HandlerError> {
        self.admit(&ctx)?;
        self.inner.handle(ctx, request, out).await
    }
}

impl<H: SessionHandler> SessionHandler for WhileThawed<H> {
    type Request = H::Request;

    async fn handle<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        request: H::Request,
        session: Session<'a, '_>,
    ) -> Result<(), HandlerError> {
        self.admit(&ctx)?;
        self.inner.handle(ctx, request, session).await
    }
}

fn rpc_error(err: QuiesceError) -> RpcError {
    let code = match err {
        QuiesceError::AlreadyFrozen | QuiesceError::InProgress | QuiesceError::WrongToken => {
            ErrorCode::CONFLICT
        }
        QuiesceError::TimeoutTooLong(_) => ErrorCode::BAD_REQUEST,
        QuiesceError::Mounts(_) | QuiesceError::Filesystem { .. } => ErrorCode::INTERNAL,
    };
    RpcError::new(code, err.to_string())
}

/// Runs a quiescer call on the blocking pool (freezing writes out dirty data).
async fn blocking<F: FsFreezer, T: Send + 'static>(
    quiescer: &Quiescer<F>,
    op: impl FnOnce(&Quiescer<F>) -> Result<T, QuiesceError> + Send + 'static,
) -> Result<T, RpcError> {
    let quiescer = quiescer.clone();
    tokio::task::spawn_blocking(move || op(&quiescer))
        .await
        .map_err(|e| RpcError::internal(format!("freeze operation panicked: {e}")))?
        .map_err(rpc_error)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn fs_entry(target: &Path, fstype: &str, source: &str, reason: &str) -> FrozenFilesystem {
    FrozenFilesystem {
        mount_point: target.display().to_string(),
        fstype: fstype.to_owned(),
        source: source.to_owned(),
        reason: reason.to_owned(),
    }
}

fn frozen_fs(m: &MountedFs) -> FrozenFilesystem {
    fs_entry(&m.target, &m.fstype, &m.source, "")
}

fn skipped_fs(s: &Skipped) -> FrozenFilesystem {
    fs_entry(&s.target, &s.fstype, "", &s.reason)
}

struct Freeze<F> {
    quiescer: Quiescer<F>,
    runtimes: Vec<Arc<dyn RuntimeDaemons>>,
}

impl<F: FsFreezer> UnaryHandler for Freeze<F> {
    type Request = FsFreezeRequest;
    type Response = FsFreezeResponse;

    async fn handle(&self, _: RequestContext<'_>, r: FsFreezeRequest) -> Result<FsFreezeResponse, RpcError> {
        let pause = if r.pause_runtime { daemons_to_pause(&self.runtimes).await } else { Vec::new() };
        let options = FreezeOptions { timeout: Duration::from_secs(r.timeout_secs.into()), pause };
        let report = blocking(&self.quiescer, move |q| q.freeze(options)).await?;
        Ok(FsFreezeResponse {
            token: report.token,
            frozen: report.frozen.iter().map(frozen_fs).collect(),
            skipped: report.skipped.iter().map(skipped_fs).collect(),
            paused: report.paused.iter().map(ToString::to_string).collect(),
            freeze_micros: micros(report.took),
            auto_thaw_millis: millis(report.auto_thaw_after),
        })
    }
}

struct Thaw<F>(Quiescer<F>);

impl<F: FsFreezer> UnaryHandler for Thaw<F> {
    type Request = FsThawRequest;
    type Response = FsThawResponse;

    async fn handle(&self, _: RequestContext<'_>, r: FsThawRequest) -> Result<FsThawResponse, RpcError> {
        let report = blocking(&self.0, move |q| q.thaw(&r.token, r.force)).await?;
        Ok(FsThawResponse {
            was_frozen: report.was_frozen,
            thawed: report.thawed.iter().map(|p| p.display().to_string()).collect(),
            resumed: report.resumed.iter().map(ToString::to_string).collect(),
            errors: report.errors,
            thaw_micros: micros(report.took),
            frozen_millis: millis(report.frozen_for),
        })
    }
}

struct Status<F>(Quiescer<F>);

impl<F: FsFreezer> UnaryHandler for Status<F> {
    type Request = FsFreezeStatusRequest;
    type Response = FsFreezeStatusResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: FsFreezeStatusRequest,
    ) -> Result<FsFreezeStatusResponse, RpcError> {
        // Only a mutex held for microseconds: no need for the blocking pool.
        let status = self.0.status();
        let last = status.last_thaw.as_ref();
        Ok(FsFreezeStatusResponse {
            state: status.phase.name().to_owned(),
            frozen: status.frozen.iter().map(|p| p.display().to_string()).collect(),
            paused: status.paused.iter().map(ToString::to_string).collect(),
            frozen_millis: millis(status.frozen_for),
            auto_thaw_in_millis: status.auto_thaw_in.map(millis).unwrap_or(0),
            last_thaw: last.map(|t| t.cause.name().to_owned()).unwrap_or_default(),
            last_frozen_millis: last.map(|t| millis(t.frozen_for)).unwrap_or(0),
            auto_thaws: status.auto_thaws,
            refused_requests: status.refused,
            last_thaw_errors: last.map(|t| t.errors.clone()).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFreezer, FakeProcesses};
    use crate::protocol::proto::agent::{AgentPingRequest, AgentPingResponse};

    fn ctx(msg_type: MessageType) -> RequestContext<'static> {
        RequestContext { msg_type: msg_type.code(), trace_id: "", peer: "test" }
    }

    fn quiescer() -> Quiescer<FakeFreezer> {
        let processes = Arc::new(FakeProcesses::new(Default::default(), Default::default()));
        Quiescer::new(Arc::new(FakeFreezer::guest()), processes, FreezeGate::default())
    }

    struct Pong;

    impl UnaryHandler for Pong {
        type Request = AgentPingRequest;
        type Response = AgentPingResponse;
        async fn handle(
            &self,
            _: RequestContext<'_>,
            _: AgentPingRequest,
        ) -> Result<AgentPingResponse, RpcError> {
            Ok(AgentPingResponse { message: "ran".into(), ..Default::default() })
        }
    }

    #[tokio::test]
    async fn a_decorated_request_is_refused_503_while_frozen_and_runs_once_thawed() {
        let q = quiescer();
        let guarded = WhileThawed::new(q.gate(), Pong);
        let freeze = Freeze { quiescer: q.clone(), runtimes: Vec::new() };
        let frozen =
            freeze.handle(ctx(MessageType::FsFreezeRequest), FsFreezeRequest::default()).await.unwrap();
        assert_eq!(frozen.frozen.len(), 1);
        assert_eq!(frozen.auto_thaw_millis, 10_000);
        let err = guarded
            .handle(ctx(MessageType::FileWriteRequest), AgentPingRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UNAVAILABLE);
        assert!(
            err.message.starts_with("FileWriteRequest refused: the guest's filesystems are frozen"),
            "{}",
            err.message
        );
        let status = Status(q.clone())
            .handle(ctx(MessageType::FsFreezeStatusRequest), FsFreezeStatusRequest {})
            .await
            .unwrap();
        assert_eq!((status.state.as_str(), status.refused_requests), ("frozen", 1));
        assert!(status.auto_thaw_in_millis > 0 && status.auto_thaw_in_millis <= 10_000);

        let wrong = Thaw(q.clone())
            .handle(ctx(MessageType::FsThawRequest), FsThawRequest { token: "x".into(), force: false })
            .await
            .unwrap_err();
        assert_eq!(wrong.code, ErrorCode::CONFLICT);
        let thawed = Thaw(q.clone())
            .handle(ctx(MessageType::FsThawRequest), FsThawRequest { token: frozen.token, force: false })
            .await
            .unwrap();
        assert_eq!(thawed.thawed, ["/var/lib/containerd"]);
        let ran =
            guarded.handle(ctx(MessageType::FileWriteRequest), AgentPingRequest::default()).await.unwrap();
        assert_eq!(ran.message, "ran");
    }

    #[tokio::test]
    async fn a_freeze_failing_on_a_filesystem_is_a_500_naming_it() {
        let freezer = Arc::new(FakeFreezer::guest());
        freezer.fail_freeze("/var/lib/containerd", "EIO");
        let processes = Arc::new(FakeProcesses::new(Default::default(), Default::default()));
        let q = Quiescer::new(freezer, processes, FreezeGate::default());
        let freeze = Freeze { quiescer: q, runtimes: Vec::new() };
        let err =
            freeze.handle(ctx(MessageType::FsFreezeRequest), FsFreezeRequest::default()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::INTERNAL);
        assert!(err.message.contains("freezing /var/lib/containerd failed"), "{}", err.message);
    }
}
