//! `arcbox-agentctl`: the host CLI. Human output by default, one JSON
//! document per command with `--json`.
//!
//! The global flags (`--connect`, `--json`, `--connect-timeout`,
//! `--call-timeout`) go before or after the subcommand; the address may
//! also come from `ARCBOX_AGENT_ADDR`.
//!
//! Exit codes (`Exit`): 0 success; 1 the agent answered with an error or
//! what was asked failed (runtime or k3s start, stop, shutdown); 2 usage
//! (including a missing agent address); 3 cannot connect; 4 timed out
//! (`--wait`, `watch --idle-timeout`, a call's deadline); 70 internal.
//! `exec` passes the guest command's exit code through instead (see `exec`).
//!
//! # Layout
//! - this module: arguments, one function per command, exit codes.
//! - `exec`: `exec`, a command in the guest like `docker exec` (terminal, signals, exit code).
//! - `fs`: the `fs` subcommands (the guest's files, confined to a root).
//! - `stats`: the `stats` command (one sample, or rates with `--watch`; Prometheus text).
//! - `quiesce`: `freeze`, `thaw`, `freeze-status` and `time sync`.
//! - `sandbox`: the `sandbox` subcommands (the reference's sandbox family).
//! - `text`: the human rendering of each answer.

mod cp;
mod exec;
mod fs;
mod quiesce;
mod sandbox;
mod stats;
mod text;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
use arcbox_agent_wire::protocol::ports::DOCKER_API_VSOCK_PORT;
use arcbox_agent_wire::protocol::proto::agent::RuntimeEnsureResponse;
use arcbox_agent_wire::protocol::values::{ensure_status, event_kind};
use arcbox_agent_wire::transport::Address;
use clap::builder::PossibleValuesParser;
use clap::{CommandFactory as _, Parser, Subcommand};
use serde::Serialize;

/// The environment variable that stands in for `--connect`.
const ADDRESS_ENV: &str = "ARCBOX_AGENT_ADDR";
/// How long `ensure-runtime --wait` waits by default.
const DEFAULT_RUNTIME_WAIT_SECS: u64 = 120;
/// How long `boot-report --wait` waits by default.
const DEFAULT_BOOT_WAIT_SECS: u64 = 60;
/// How often `ensure-runtime --wait` polls the runtime's status.
const RUNTIME_POLL: Duration = Duration::from_millis(200);
/// How often `boot-report --wait` polls the boot report.
const BOOT_REPORT_POLL: Duration = Duration::from_millis(100);

/// Talk to an arcbox-agent.
#[derive(Debug, Parser)]
#[command(name = "arcbox-agentctl", version)]
pub struct Args {
    /// Agent address: vsock:CID:PORT, hvsock:/path/to/uds:PORT, unix:/path or tcp:HOST:PORT.
    // Optional to clap (a global argument cannot be required); checked in `main`.
    #[arg(long, short = 'c', env = ADDRESS_ENV, global = true)]
    connect: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to keep retrying the connection.
    #[arg(long, default_value_t = ConnectOptions::default().connect_timeout.as_secs(), global = true)]
    connect_timeout: u64,
    /// Seconds each call may take.
    #[arg(long, default_value_t = ConnectOptions::default().call_timeout.as_secs(), global = true)]
    call_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the agent answers; report version, protocol and capabilities.
    Ping {
        /// Also send the host's time so the agent steps the guest clock.
        #[arg(long)]
        sync_time: bool,
    },
    /// Show the guest's system information.
    Info,
    /// Start the container runtime if needed.
    EnsureRuntime {
        /// Wait until the runtime is ready or failed, showing progress.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = DEFAULT_RUNTIME_WAIT_SECS)]
        wait_timeout: u64,
        /// Only report whether it is running; never start it.
        #[arg(long, conflicts_with = "wait")]
        probe: bool,
    },
    /// Show the runtime's per-service status.
    Status,
    /// Kubernetes (k3s) on the guest: start (non-blocking), stop, delete, status, kubeconfig.
    K8s {
        #[arg(value_enum)]
        action: K8sAction,
    },
    /// The guest DNS server: `list` its names and upstreams, `set-upstreams IP[:PORT]...`.
    Dns {
        #[command(subcommand)]
        action: DnsAction,
    },
    /// The guest's files, every path inside --root: cat, put (stdin), stat, ls, mkdir, rm.
    Fs {
        /// The guest directory paths are confined to (`..` and symlinks cannot leave it).
        #[arg(long, default_value = "/")]
        root: String,
        #[command(subcommand)]
        action: fs::FsAction,
    },
    /// Run a command in the guest, like `docker exec`; its exit code becomes ours.
    Exec(exec::ExecArgs),
    /// Copy files and directories between host and guest, like `docker cp`
    /// (`guest:PATH` names the guest side; `-` is a tar archive on stdin or stdout).
    Cp(cp::CpArgs),
    /// Print readiness events as they happen (agent, runtime, k3s, daemons).
    Watch {
        /// Exit 0 once an event of this kind arrives (e.g. runtime_ready, kubernetes_ready).
        #[arg(long, value_parser = PossibleValuesParser::new(event_kind::ALL))]
        until: Option<String>,
        /// Give up (exit 4) after this many seconds without an event.
        #[arg(long)]
        idle_timeout: Option<u64>,
    },
    /// Show the guest's boot report (init steps and timings).
    BootReport {
        /// Wait until the guest's init has completed (exit 4 if it does not in time).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = DEFAULT_BOOT_WAIT_SECS, requires = "wait")]
        wait_timeout: u64,
    },
    /// Expose the guest's Docker API as a local Unix socket for the Docker
    /// CLI (`DOCKER_HOST=unix:///path`). Runs until Ctrl-C.
    DockerProxy {
        /// Local socket to create, e.g. unix:/tmp/arcbox-docker.sock.
        #[arg(long)]
        listen: String,
        /// Guest port of the Docker API proxy (replaces the --connect port;
        /// a unix: --connect address is used as it is).
        #[arg(long, default_value_t = DOCKER_API_VSOCK_PORT)]
        port: u32,
    },
    /// The guest's CPU, memory, pressure, disk, network and container counters.
    Stats(stats::StatsArgs),
    /// Sandboxes: create, ls, inspect, run, exec, stop, rm, events, checkpoint, restore, snapshots.
    Sandbox {
        #[command(subcommand)]
        action: sandbox::SandboxAction,
    },
    /// Freeze the guest's writable disk filesystems for a snapshot; prints the thaw token first.
    Freeze {
        /// Seconds before the guest thaws by itself (0: 10, at most 600).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
        /// Pause dockerd, k3s and containerd around the freeze.
        #[arg(long)]
        pause_runtime: bool,
    },
    /// Thaw a freeze with the token `freeze` printed.
    Thaw {
        /// The freeze's token (omit with --force).
        #[arg(required_unless_present = "force", default_value = "")]
        token: String,
        /// Thaw whatever the token (a lost token).
        #[arg(long)]
        force: bool,
    },
    /// Show whether the filesystems are frozen, and the last thaw.
    FreezeStatus,
    /// The guest clock: `sync [--woke]` steps or slews it to the host's (or ptp_kvm's).
    Time {
        #[command(subcommand)]
        action: quiesce::TimeAction,
    },
    /// Power the guest off in order.
    Shutdown {
        /// Seconds of grace for processes to exit (0: the agent's default).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
    },
}

#[derive(Debug, Subcommand)]
enum DnsAction {
    /// Show the registered names (containers), the local zone and the upstreams.
    List,
    /// Replace the upstreams the guest forwards other names to.
    SetUpstreams {
        /// `IP` (port 53), `IP:PORT` or `[V6]:PORT`, in failover order.
        #[arg(required = true)]
        upstreams: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum K8sAction {
    Start,
    Stop,
    Delete,
    Status,
    Kubeconfig,
}

/// How a command ended: the process's documented exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// 0: done.
    Success,
    /// 1: the agent answered with an error, or what was asked failed.
    Failed,
    /// 2: the command line is wrong or incomplete.
    Usage,
    /// 3: the agent cannot be reached (or its address is malformed).
    Unreachable,
    /// 4: something did not happen in time.
    TimedOut,
    /// 70 (EX_SOFTWARE): the CLI itself could not run.
    Internal,
    /// `exec`: the guest command's own code.
    Passthrough(u8),
}

impl Exit {
    fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::TimedOut => 4,
            Exit::Internal => 70,
            Exit::Passthrough(code) => code,
        }
    }

    fn of(err: &ClientError) -> Self {
        match err {
            ClientError::Connect(_) => Exit::Unreachable,
            ClientError::Timeout(_) => Exit::TimedOut,
            _ => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let Some(connect) = args.connect.as_deref() else {
        let message = format!("no agent address: pass --connect ADDR or set {ADDRESS_ENV}");
        // Printed the way clap prints its own usage errors, with the usage line.
        let _ = Args::command().error(clap::error::ErrorKind::MissingRequiredArgument, message).print();
        return Exit::Usage.into();
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("arcbox-agentctl: cannot start the async runtime: {err}");
            return Exit::Internal.into();
        }
    };
    let result = runtime.block_on(run(&args, connect));
    // A read of the local stdin (`exec -i`) may still be blocked: never wait for it.
    runtime.shutdown_background();
    match result {
        Ok(exit) => exit.into(),
        Err(err) => {
            eprintln!("arcbox-agentctl: {err}");
            Exit::of(&err).into()
        }
    }
}

async fn run(args: &Args, connect: &str) -> Result<Exit, ClientError> {
    let address = Address::parse(connect).map_err(|e| ClientError::Connect(std::io::Error::other(e)))?;
    if let Command::DockerProxy { listen, port } = &args.command {
        return docker_proxy(&address.with_port(*port), listen).await;
    }
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(args.connect_timeout),
        call_timeout: Duration::from_secs(args.call_timeout),
        ..ConnectOptions::default()
    };
    if let Command::Exec(exec_args) = &args.command {
        return Ok(Exit::Passthrough(exec::run(&address, options, exec_args).await));
    }
    let mut client = AgentClient::connect(&address, options).await?;
    let out = Output { json: args.json };
    let client = &mut client;
    match &args.command {
        Command::Ping { sync_time } => ping(client, &out, *sync_time).await,
        Command::Info => {
            let info = client.system_info().await?;
            out.emit(&info, || text::info(&info));
            Ok(Exit::Success)
        }
        Command::EnsureRuntime { wait, wait_timeout, probe } => {
            ensure_runtime(client, &out, wait.then(|| Duration::from_secs(*wait_timeout)), *probe).await
        }
        Command::Status => {
            let status = client.runtime_status().await?;
            out.emit(&status, || text::runtime_status(&status));
            Ok(Exit::Success)
        }
        Command::BootReport { wait, wait_timeout } => {
            boot_report(client, &out, wait.then(|| Duration::from_secs(*wait_timeout))).await
        }
        Command::Watch { until, idle_timeout } => {
            watch(client, &out, until.as_deref(), idle_timeout.map(Duration::from_secs)).await
        }
        Command::K8s { action } => kubernetes(client, &out, *action).await,
        Command::Dns { action: DnsAction::List } => {
            let r = client.dns_list().await?;
            out.emit(&r, || text::dns_list(&r));
            Ok(Exit::Success)
        }
        Command::Dns { action: DnsAction::SetUpstreams { upstreams } } => {
            let r = client.dns_set_upstreams(upstreams.clone()).await?;
            out.emit(&r, || format!("upstreams: {}", r.upstreams.join(", ")));
            Ok(Exit::Success)
        }
        Command::Fs { root, action } => fs::run(client, &out, root, action).await,
        Command::Cp(cp_args) => cp::run(client, &out, cp_args).await,
        Command::Sandbox { action } => sandbox::run(client, &out, action).await,
        Command::Stats(stats_args) => stats::run(client, &out, stats_args).await,
        Command::Shutdown { timeout } => {
            let answer = client.shutdown(*timeout).await?;
            out.emit(&answer, || {
                if answer.accepted { "shutdown accepted" } else { "shutdown refused" }.to_owned()
            });
            Ok(if answer.accepted { Exit::Success } else { Exit::Failed })
        }
        Command::Freeze { timeout, pause_runtime } => {
            quiesce::freeze(client, &out, *timeout, *pause_runtime).await
        }
        Command::Thaw { token, force } => quiesce::thaw(client, &out, token, *force).await,
        Command::FreezeStatus => quiesce::status(client, &out).await,
        Command::Time { action } => quiesce::time(client, &out, action).await,
        Command::DockerProxy { .. } | Command::Exec(_) => unreachable!("handled before connecting"),
    }
}

async fn ping(client: &mut AgentClient, out: &Output, sync_time: bool) -> Result<Exit, ClientError> {
    let started = Instant::now();
    let pong = client.ping(sync_time.then(SystemTime::now)).await?;
    let rtt = started.elapsed();
    out.emit(&pong, || text::pong(&pong, rtt));
    Ok(Exit::Success)
}

/// EnsureRuntime; with `wait`, until the runtime is ready or failed.
async fn ensure_runtime(
    client: &mut AgentClient,
    out: &Output,
    wait: Option<Duration>,
    probe: bool,
) -> Result<Exit, ClientError> {
    let answer = match wait {
        Some(limit) => wait_for_runtime(client, out, limit).await?,
        None => client.ensure_runtime(!probe).await?,
    };
    out.emit(&answer, || text::ensure(&answer));
    Ok(if answer.status == ensure_status::FAILED {
        Exit::Failed
    } else if wait.is_some() && !answer.ready {
        Exit::TimedOut
    } else {
        Exit::Success
    })
}

/// Starts the runtime and waits, printing each change of the services'
/// states to stderr (stdout keeps only the result).
async fn wait_for_runtime(
    client: &mut AgentClient,
    out: &Output,
    limit: Duration,
) -> Result<RuntimeEnsureResponse, ClientError> {
    let started = Instant::now();
    let mut last_line = String::new();
    let show = !out.json;
    client
        .wait_for_runtime(limit, RUNTIME_POLL, |status| {
            let line = text::service_states(status);
            if show && line != last_line {
                eprintln!("[{:6.2}s] {} ({})", started.elapsed().as_secs_f64(), line, status.detail);
                last_line = line;
            }
        })
        .await
}

/// The boot report; with `wait`, once init has completed. A wait that
/// runs out still prints the report, then exits 4.
async fn boot_report(
    client: &mut AgentClient,
    out: &Output,
    wait: Option<Duration>,
) -> Result<Exit, ClientError> {
    let report = match wait {
        Some(limit) => client.boot_report_when_complete(limit, BOOT_REPORT_POLL).await?,
        None => client.boot_report().await?,
    };
    out.emit(&report, || text::boot_report(&report, wait.is_some()));
    match wait {
        Some(limit) if report.init_complete_us == 0 => {
            eprintln!("arcbox-agentctl: the guest's init did not complete within {} s", limit.as_secs());
            Ok(Exit::TimedOut)
        }
        _ => Ok(Exit::Success),
    }
}

/// Prints readiness events until one of kind `until` (if any) arrives.
async fn watch(
    client: &mut AgentClient,
    out: &Output,
    until: Option<&str>,
    idle_timeout: Option<Duration>,
) -> Result<Exit, ClientError> {
    let started = Instant::now();
    client
        .watch_readiness(idle_timeout, |event| {
            let done = until == Some(event.kind.as_str());
            out.emit(&event, || text::event(&event, started.elapsed()));
            !done
        })
        .await?;
    Ok(Exit::Success)
}

async fn kubernetes(client: &mut AgentClient, out: &Output, action: K8sAction) -> Result<Exit, ClientError> {
    match action {
        K8sAction::Start => {
            let r = client.kubernetes_start().await?;
            out.emit(&r, || text::k8s_start(&r));
            // Not running after a start request: the start failed.
            Ok(if r.running { Exit::Success } else { Exit::Failed })
        }
        K8sAction::Stop => {
            let r = client.kubernetes_stop().await?;
            out.emit(&r, || text::k8s_stop(&r));
            Ok(if r.stopped { Exit::Success } else { Exit::Failed })
        }
        K8sAction::Delete => {
            let r = client.kubernetes_delete().await?;
            out.emit(&r, || r.detail.clone());
            Ok(Exit::Success)
        }
        K8sAction::Status => {
            let r = client.kubernetes_status().await?;
            out.emit(&r, || text::k8s_status(&r));
            Ok(Exit::Success)
        }
        K8sAction::Kubeconfig => {
            let r = client.kubernetes_kubeconfig().await?;
            // As the file reads, so `k8s kubeconfig > ~/.kube/config` works.
            out.emit(&r, || r.kubeconfig.trim_end().to_owned());
            Ok(Exit::Success)
        }
    }
}

/// Serves a local Unix socket that relays each connection to the guest's
/// Docker API port.
async fn docker_proxy(target: &Address, listen: &str) -> Result<Exit, ClientError> {
    use arcbox_agent_core::proxy::{ProxyStats, serve_proxy};
    use arcbox_agent_core::transport::UnixTransport;
    let local = match Address::parse(listen) {
        Ok(Address::Unix(path)) => path,
        Ok(other) => {
            eprintln!("arcbox-agentctl: --listen must be a unix: address, not {other}");
            return Ok(Exit::Usage);
        }
        Err(err) => {
            eprintln!("arcbox-agentctl: {err}");
            return Ok(Exit::Usage);
        }
    };
    let listener = UnixTransport::bind(&local).map_err(ClientError::Connect)?;
    eprintln!(
        "arcbox-agentctl: Docker API of {target} on {} (export DOCKER_HOST=unix://{}); Ctrl-C stops",
        local.display(),
        local.display()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        }
    });
    serve_proxy(listener, target.clone(), std::sync::Arc::new(ProxyStats::default()), stop).await;
    let _ = std::fs::remove_file(&local);
    Ok(Exit::Success)
}

/// Where answers go: text or JSON, one document per command (per event for `watch`).
struct Output {
    json: bool,
}

impl Output {
    fn emit<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        let mut stdout = std::io::stdout().lock();
        let text = if self.json {
            serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        } else {
            human()
        };
        // A closed stdout (e.g. piped to `head`) is not an error worth reporting.
        let _ = writeln!(stdout, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_after_the_subcommand() {
        let args = Args::try_parse_from([
            "arcbox-agentctl",
            "boot-report",
            "--wait",
            "--json",
            "--connect",
            "unix:/a",
            "--call-timeout",
            "3",
        ])
        .unwrap();
        assert_eq!(args.connect.as_deref(), Some("unix:/a"));
        assert!(args.json);
        assert_eq!(args.call_timeout, 3);
        assert!(matches!(
            args.command,
            Command::BootReport { wait: true, wait_timeout: DEFAULT_BOOT_WAIT_SECS }
        ));
    }

    #[test]
    fn a_boot_wait_timeout_needs_wait() {
        let err =
            Args::try_parse_from(["arcbox-agentctl", "boot-report", "--wait-timeout", "5"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let codes =
            [Exit::Success, Exit::Failed, Exit::Usage, Exit::Unreachable, Exit::TimedOut, Exit::Internal]
                .map(Exit::code);
        assert_eq!(codes, [0, 1, 2, 3, 4, 70]);
        assert_eq!(Exit::of(&ClientError::Timeout(Duration::from_secs(1))), Exit::TimedOut);
        assert_eq!(Exit::of(&ClientError::Connect(std::io::Error::other("x"))), Exit::Unreachable);
        assert_eq!(Exit::of(&ClientError::Disconnected), Exit::Failed);
    }
}
