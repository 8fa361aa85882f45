//! `arcbox-agentctl`: the host CLI. Human output by default, one JSON
//! document per command with `--json`.
//!
//! Exit codes: 0 success; 1 the agent answered with an error or the
//! runtime failed; 2 usage; 3 cannot connect; 4 timed out.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use arcbox_agent_core::protocol::MessageType;
use arcbox_agent_core::protocol::proto::agent::{RuntimeEnsureResponse, RuntimeStatusResponse};
use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
use arcbox_agent_wire::transport::Address;
use clap::{Parser, Subcommand};
use serde::Serialize;

/// Talk to an arcbox-agent.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// Agent address: vsock:CID:PORT, hvsock:/path/to/uds:PORT, unix:/path or tcp:HOST:PORT.
    #[arg(long, short = 'c', env = "ARCBOX_AGENT_ADDR")]
    connect: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to keep retrying the connection.
    #[arg(long, default_value_t = 10, global = true)]
    connect_timeout: u64,
    /// Seconds each call may take.
    #[arg(long, default_value_t = 10, global = true)]
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
        #[arg(long, default_value_t = 120)]
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
    /// Print readiness events as they happen (agent, runtime, daemons).
    Watch {
        /// Exit 0 once an event of this kind arrives (e.g. runtime_ready).
        #[arg(long)]
        until: Option<String>,
        /// Give up (exit 4) after this many seconds without an event.
        #[arg(long)]
        idle_timeout: Option<u64>,
    },
    /// Show the guest's boot report (init steps and timings).
    BootReport,
    /// Expose the guest's Docker API as a local Unix socket for the Docker
    /// CLI (`DOCKER_HOST=unix:///path`). Runs until Ctrl-C.
    DockerProxy {
        /// Local socket to create, e.g. unix:/tmp/arcbox-docker.sock.
        #[arg(long)]
        listen: String,
        /// Guest port of the Docker API proxy (replaces the --connect port;
        /// a unix: --connect address is used as it is).
        #[arg(long, default_value_t = 2375)]
        port: u32,
    },
    /// Power the guest off in order.
    Shutdown {
        /// Seconds of grace for processes to exit (0: the agent's default).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("arcbox-agentctl: cannot start the async runtime: {err}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("arcbox-agentctl: {err}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn exit_code(err: &ClientError) -> u8 {
    match err {
        ClientError::Connect(_) => 3,
        ClientError::Timeout(_) => 4,
        _ => 1,
    }
}

async fn run(args: &Args) -> Result<ExitCode, ClientError> {
    let address =
        Address::parse(&args.connect).map_err(|e| ClientError::Connect(std::io::Error::other(e)))?;
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(args.connect_timeout),
        call_timeout: Duration::from_secs(args.call_timeout),
        ..ConnectOptions::default()
    };
    if let Command::DockerProxy { listen, port } = &args.command {
        return docker_proxy(&address.with_port(*port), listen).await;
    }
    let mut client = AgentClient::connect(&address, options).await?;
    let out = Output { json: args.json };
    match &args.command {
        Command::Ping { sync_time } => {
            let started = Instant::now();
            let pong = client.ping(sync_time.then(SystemTime::now)).await?;
            let rtt = started.elapsed();
            out.emit(&pong, || {
                let names: Vec<String> = pong.capabilities.iter().map(|c| type_name(*c)).collect();
                let mut text = format!(
                    "{} from arcbox-agent {} (protocol {}, boot {}) in {:.2} ms\ncapabilities: {}",
                    pong.message,
                    pong.version,
                    pong.protocol_version,
                    pong.boot_id,
                    rtt.as_secs_f64() * 1e3,
                    names.join(", ")
                );
                if !pong.clock.is_empty() {
                    text.push_str(&format!("\nclock: {}", pong.clock));
                }
                text
            });
        }
        Command::Info => {
            let info = client.system_info().await?;
            out.emit(&info, || {
                format!(
                    "hostname:   {}\nkernel:     {} {} ({})\nos:         {}\ncpus:       {}\nmemory:     {} MiB total, {} MiB available\nload:       {:?}\nuptime:     {} s\naddresses:  {}\nagent rss:  {} KiB after {} requests",
                    info.hostname,
                    info.os_name,
                    info.kernel_version,
                    info.arch,
                    info.os_version,
                    info.cpu_count,
                    info.total_memory >> 20,
                    info.available_memory >> 20,
                    info.load_average,
                    info.uptime,
                    if info.ip_addresses.is_empty() { "(none)".to_owned() } else { info.ip_addresses.join(" ") },
                    info.agent_rss_bytes >> 10,
                    info.agent_requests_served,
                )
            });
        }
        Command::EnsureRuntime { wait, wait_timeout, probe } => {
            let answer = if *wait {
                wait_for_runtime(&mut client, &out, Duration::from_secs(*wait_timeout)).await?
            } else {
                client.ensure_runtime(!probe).await?
            };
            out.emit(&answer, || describe_ensure(&answer));
            if answer.status == "failed" {
                return Ok(ExitCode::from(1));
            }
            if *wait && !answer.ready {
                return Ok(ExitCode::from(4));
            }
        }
        Command::Status => {
            let status = client.runtime_status().await?;
            out.emit(&status, || describe_status(&status));
        }
        Command::BootReport => {
            let report = client.boot_report().await?;
            out.emit(&report, || {
                let mut text = format!(
                    "boot {} (agent {}, pid1: {})\nkernel uptime at agent start: {:.3} s\nlistener ready: {:.3} ms after agent start\ninit complete:  {}\n",
                    report.boot_id,
                    report.agent_version,
                    report.pid1,
                    report.kernel_uptime_at_start_secs,
                    report.listener_ready_us as f64 / 1e3,
                    if report.init_complete_us == 0 {
                        "not yet".to_owned()
                    } else {
                        format!("{:.3} ms after agent start", report.init_complete_us as f64 / 1e3)
                    },
                );
                for step in &report.steps {
                    text.push_str(&format!(
                        "  {:<8} {:>9.3} ms  {}{}{}\n",
                        step.outcome,
                        step.duration_us as f64 / 1e3,
                        step.name,
                        if step.reason.is_empty() { "" } else { ": " },
                        step.reason
                    ));
                }
                text.trim_end().to_owned()
            });
        }
        Command::Watch { until, idle_timeout } => {
            let started = Instant::now();
            client
                .watch_readiness(idle_timeout.map(Duration::from_secs), |event| {
                    let done = until.as_deref() == Some(event.kind.as_str());
                    out.emit(&event, || {
                        let mut line = format!("[{:8.3}s] {}", started.elapsed().as_secs_f64(), event.kind);
                        if !event.service.is_empty() {
                            line.push_str(&format!(" {}", event.service));
                        }
                        if event.pid != 0 {
                            line.push_str(&format!(" (pid {})", event.pid));
                        }
                        if !event.reason.is_empty() {
                            line.push_str(&format!(": {}", event.reason));
                        }
                        line
                    });
                    !done
                })
                .await?;
        }
        Command::K8s { action } => kubernetes(&mut client, &out, *action).await?,
        Command::DockerProxy { .. } => unreachable!("handled before connecting"),
        Command::Shutdown { timeout } => {
            let answer = client.shutdown(*timeout).await?;
            out.emit(&answer, || {
                if answer.accepted { "shutdown accepted" } else { "shutdown refused" }.to_owned()
            });
            if !answer.accepted {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn kubernetes(client: &mut AgentClient, out: &Output, action: K8sAction) -> Result<(), ClientError> {
    use arcbox_agent_core::protocol::proto::agent as pb;
    match action {
        K8sAction::Start => {
            let r: pb::KubernetesStartResponse =
                client.call(MessageType::KubernetesStartRequest, &pb::KubernetesStartRequest {}).await?;
            out.emit(&r, || {
                format!("running {}, api ready {} ({}): {}", r.running, r.api_ready, r.endpoint, r.detail)
            });
        }
        K8sAction::Stop => {
            let r: pb::KubernetesStopResponse =
                client.call(MessageType::KubernetesStopRequest, &pb::KubernetesStopRequest {}).await?;
            out.emit(&r, || format!("stopped {}: {}", r.stopped, r.detail));
        }
        K8sAction::Delete => {
            let r: pb::KubernetesDeleteResponse =
                client.call(MessageType::KubernetesDeleteRequest, &pb::KubernetesDeleteRequest {}).await?;
            out.emit(&r, || r.detail.clone());
        }
        K8sAction::Status => {
            let r: pb::KubernetesStatusResponse =
                client.call(MessageType::KubernetesStatusRequest, &pb::KubernetesStatusRequest {}).await?;
            out.emit(&r, || {
                format!("running {}, api ready {} ({}): {}", r.running, r.api_ready, r.endpoint, r.detail)
            });
        }
        K8sAction::Kubeconfig => {
            let r: pb::KubernetesKubeconfigResponse = client
                .call(MessageType::KubernetesKubeconfigRequest, &pb::KubernetesKubeconfigRequest {})
                .await?;
            out.emit(&r, || r.kubeconfig.clone());
        }
    }
    Ok(())
}

/// Serves a local Unix socket that relays each connection to the guest's
/// Docker API port.
async fn docker_proxy(target: &Address, listen: &str) -> Result<ExitCode, ClientError> {
    use arcbox_agent_core::proxy::{ProxyStats, serve_proxy};
    use arcbox_agent_core::transport::UnixTransport;
    let local = match Address::parse(listen) {
        Ok(Address::Unix(path)) => path,
        Ok(other) => {
            eprintln!("arcbox-agentctl: --listen must be a unix: address, not {other}");
            return Ok(ExitCode::from(2));
        }
        Err(err) => {
            eprintln!("arcbox-agentctl: {err}");
            return Ok(ExitCode::from(2));
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
    Ok(ExitCode::SUCCESS)
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
        .wait_for_runtime(limit, Duration::from_millis(200), |status| {
            let line = status
                .services
                .iter()
                .map(|s| format!("{} {}", s.name, s.status))
                .collect::<Vec<_>>()
                .join(", ");
            if show && line != last_line {
                eprintln!("[{:6.2}s] {} ({})", started.elapsed().as_secs_f64(), line, status.detail);
                last_line = line;
            }
        })
        .await
}

fn describe_ensure(answer: &RuntimeEnsureResponse) -> String {
    let mut text = format!("runtime {}: {}", answer.status, answer.message);
    if !answer.endpoint.is_empty() {
        text.push_str(&format!("\nendpoint: {}", answer.endpoint));
    }
    text
}

fn describe_status(status: &RuntimeStatusResponse) -> String {
    let mut text = format!(
        "state: {}\ncontainerd ready: {}\ndocker ready: {}\nendpoint: {}\ndetail: {}",
        if status.state.is_empty() { "(not reported)" } else { &status.state },
        status.containerd_ready,
        status.docker_ready,
        status.endpoint,
        status.detail
    );
    for s in &status.services {
        text.push_str(&format!("\n  {:<10} {:<9} {}", s.name, s.status, s.detail));
        if s.pid != 0 {
            text.push_str(&format!(" (pid {}, up {} s)", s.pid, s.uptime_secs));
        }
    }
    text
}

fn type_name(code: u32) -> String {
    MessageType::from_u32(code)
        .map(|t| t.name().trim_end_matches("Request").to_owned())
        .unwrap_or_else(|| format!("0x{code:04X}"))
}

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
