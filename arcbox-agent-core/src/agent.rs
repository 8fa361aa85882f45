//! Assembles the standard agent: the router with every built-in handler,
//! wired to the OS traits, ready to serve on any transport.

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::authz::Authz;
use crate::boot::BootRecorder;
use crate::protocol::MessageType;
use crate::quiesce::FreezeGate;
use crate::rpc::handlers::{
    AgentIdentity, BootReportHandler, DEFAULT_CLOCK_STEP_THRESHOLD, EnsureRuntimeHandler, NetworkWatch,
    PingHandler, RuntimeStatusHandler, ShutdownHandler, SyncClockHandler, SystemInfoHandler,
    WatchReadinessHandler, WhileThawed, unmanaged_network,
};
use crate::rpc::{Router, Server, ServerConfig, ServerStats};
use crate::runtime::{Backend, Lifecycle, ReadinessEvents};
use crate::sys::{Clock, PowerControl, SystemInfoSource};
use crate::transport::Transport;

/// The OS-facing parts the standard handlers need.
pub struct AgentParts<C, S, B, P> {
    /// Wall clock (Ping sets it).
    pub clock: Arc<C>,
    /// System information source.
    pub system: Arc<S>,
    /// The container runtime (EnsureRuntime, RuntimeStatus).
    pub runtime: Arc<B>,
    /// Power control (Shutdown).
    pub power: Arc<P>,
    /// Boot milestones and init steps.
    pub boot: BootRecorder,
    /// Readiness events (the runtimes publish to the same bus).
    pub events: ReadinessEvents,
    /// The guest network's status (BootReport, GetSystemInfo).
    pub network: NetworkWatch,
    /// Steps of less than this are not applied to the clock.
    pub clock_step_threshold: Duration,
    /// The freeze state: EnsureRuntime and Shutdown are refused while frozen.
    pub freeze_gate: FreezeGate,
    /// Which requests hosts may make (default: all); GetSystemInfo reports its refusals.
    pub authz: Arc<Authz>,
}

impl<C, S, B, P> AgentParts<C, S, B, P> {
    /// Parts with the default clock threshold.
    pub fn new(clock: Arc<C>, system: Arc<S>, runtime: Arc<B>, power: Arc<P>, boot: BootRecorder) -> Self {
        Self {
            clock,
            system,
            runtime,
            power,
            boot,
            events: ReadinessEvents::default(),
            network: unmanaged_network(),
            clock_step_threshold: DEFAULT_CLOCK_STEP_THRESHOLD,
            freeze_gate: FreezeGate::default(),
            authz: Arc::default(),
        }
    }
}

/// An agent under construction: add handlers with [`Agent::router_mut`],
/// then serve it.
pub struct Agent {
    router: Router,
    identity: Arc<AgentIdentity>,
    stats: Arc<ServerStats>,
    boot: BootRecorder,
    /// Cancelled when serving stops, to end long-lived streams.
    stopping: CancellationToken,
}

impl Agent {
    /// The standard agent over `parts`; returns it with its runtime's lifecycle.
    pub fn new<C, S, B, P>(parts: AgentParts<C, S, B, P>, boot_id: &str) -> (Self, Arc<Lifecycle<B>>)
    where
        C: Clock,
        S: SystemInfoSource,
        B: Backend,
        P: PowerControl,
    {
        let identity = AgentIdentity::new(boot_id);
        let stats = Arc::new(ServerStats::default());
        let runtime = Lifecycle::new(parts.runtime, parts.events.clone());
        let stopping = CancellationToken::new();
        let mut router = Router::new();
        router
            .authorize_with(Arc::clone(&parts.authz))
            .unary(MessageType::SyncClockRequest, SyncClockHandler::new(Arc::clone(&parts.clock)))
            .immediate(
                MessageType::PingRequest,
                PingHandler::new(Arc::clone(&parts.clock), Arc::clone(&identity), parts.clock_step_threshold),
            )
            .unary(
                MessageType::GetSystemInfoRequest,
                SystemInfoHandler::new(
                    parts.system,
                    parts.clock,
                    Arc::clone(&identity),
                    Arc::clone(&stats),
                    parts.network.clone(),
                    parts.authz,
                ),
            )
            .unary(
                MessageType::EnsureRuntimeRequest,
                WhileThawed::new(&parts.freeze_gate, EnsureRuntimeHandler::new(Arc::clone(&runtime))),
            )
            .unary(MessageType::RuntimeStatusRequest, RuntimeStatusHandler::new(Arc::clone(&runtime)))
            .streaming(
                MessageType::ShutdownRequest,
                WhileThawed::new(&parts.freeze_gate, ShutdownHandler::new(parts.power)),
            )
            .unary(MessageType::BootReportRequest, BootReportHandler::new(parts.boot.clone(), parts.network))
            .streaming(
                MessageType::WatchReadinessRequest,
                WatchReadinessHandler::new(parts.events, stopping.clone()),
            );
        let agent = Self { router, identity, stats, boot: parts.boot, stopping };
        (agent, runtime)
    }

    /// The router, to add or replace handlers before serving.
    pub fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// The agent's identity (version, boot id).
    pub fn identity(&self) -> &Arc<AgentIdentity> {
        &self.identity
    }

    /// Freezes the router (its request types become Ping's capabilities)
    /// and returns the server.
    pub fn into_server(self, config: ServerConfig) -> Server {
        // Set once per agent; a second call cannot happen as self is consumed.
        let _ = self.identity.capabilities.set(self.router.served_types());
        Server::new(self.router, config, self.stats)
    }

    /// Serves on `transport` until `shutdown`, recording listener-ready.
    pub async fn serve<T: Transport>(self, transport: T, config: ServerConfig, shutdown: CancellationToken) {
        let boot = self.boot.clone();
        let stopping = self.stopping.clone();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                stopping.cancel();
            }
        });
        let server = self.into_server(config);
        boot.mark_listener_ready();
        tracing::info!(address = transport.local_address(), "agent listening");
        server.serve(transport, shutdown).await;
    }
}

/// A random 128-bit id in hex, fixed for one agent start.
pub fn new_boot_id() -> String {
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}
