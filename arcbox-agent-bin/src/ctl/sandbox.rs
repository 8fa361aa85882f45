//! `arcbox-agentctl sandbox`: the reference's sandbox family (`sandbox.v1`).
//! `run` and `exec` pass the command's exit code through, as `exec` does.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use arcbox_agent_wire::client::{AgentClient, ClientError, SandboxOutput};
use arcbox_agent_wire::protocol::proto::sandbox::v1 as pb;
use clap::Subcommand;
use tokio::io::AsyncReadExt as _;
use tokio::signal::unix::{SignalKind, signal};

use super::exec::{RawTerminal, recv, window_size};
use super::{Exit, Output};

/// How long a create, checkpoint or restore may take (an image unpack, a
/// CRIU dump).
const SLOW_CALL: Duration = Duration::from_secs(300);

/// A command's process in a sandbox.
#[derive(Debug, clap::Args)]
pub(super) struct ProcessArgs {
    /// Set an environment variable (KEY=VALUE), repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Working directory in the sandbox.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User in the sandbox (uid[:gid] or a name).
    #[arg(short, long)]
    user: Option<String>,
    /// Give the command a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Kill the command after this many seconds (it exits 124).
    #[arg(long, default_value_t = 0)]
    timeout: u32,
}

/// What to do with sandboxes.
#[derive(Debug, Subcommand)]
pub(super) enum SandboxAction {
    /// Make a sandbox and start it (its main process is CMD, or an idle init).
    Create {
        /// The sandbox's id (also its DNS name).
        id: String,
        /// Its root filesystem: a directory or image file in the guest.
        #[arg(long, conflicts_with = "image", required_unless_present = "image")]
        rootfs: Option<String>,
        /// Its root filesystem: an image in the guest's containerd.
        #[arg(long)]
        image: Option<String>,
        /// A label (KEY=VALUE), repeatable.
        #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// CPUs it may use at once.
        #[arg(long, default_value_t = 0)]
        cpus: u32,
        /// Memory limit in MiB.
        #[arg(long, default_value_t = 0)]
        memory: u64,
        /// `tap` (its own address on the sandbox bridge) or `none`.
        #[arg(long, default_value = "none", value_parser = ["tap", "none"])]
        network: String,
        /// Stop and remove it after this many seconds.
        #[arg(long, default_value_t = 0)]
        ttl: u32,
        /// A guest directory to mount: SOURCE:TARGET[:ro], repeatable.
        #[arg(short, long = "mount", value_name = "SRC:DST[:ro]", value_parser = mount)]
        mounts: Vec<pb::Mount>,
        /// Set an environment variable of its main process, repeatable.
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
        env: Vec<(String, String)>,
        /// The main process and its arguments.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// List sandboxes.
    Ls {
        /// Only sandboxes in this state (ready, running, idle, stopped, ...).
        #[arg(long, default_value = "")]
        state: String,
        /// Only sandboxes with this label (KEY=VALUE), repeatable.
        #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
    /// Show a sandbox's state, address, limits and times.
    Inspect { id: String },
    /// Run a command in a sandbox; its output streams here, its exit code becomes ours.
    Run {
        id: String,
        #[command(flatten)]
        process: ProcessArgs,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Run an interactive command in a sandbox (stdin from here; -t: a terminal).
    Exec {
        id: String,
        #[command(flatten)]
        process: ProcessArgs,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Stop a sandbox's processes (SIGTERM, SIGKILL after --timeout).
    Stop {
        id: String,
        #[arg(long, default_value_t = 0)]
        timeout: u32,
    },
    /// Remove a sandbox (-f: even a running one).
    Rm {
        id: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Print sandbox events as they happen.
    Events {
        /// Only this sandbox.
        #[arg(long, default_value = "")]
        id: String,
        /// Only this action (created, ready, running, idle, stopping, stopped, failed, removed).
        #[arg(long, default_value = "")]
        action: String,
        /// Only sandboxes with this label (KEY=VALUE), repeatable.
        #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
    /// Snapshot a running sandbox (it keeps running).
    Checkpoint {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
    /// Make a new sandbox from a snapshot.
    Restore {
        snapshot: String,
        /// The new sandbox's id (default: made up).
        #[arg(long, default_value = "")]
        id: String,
        #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Give it its own network even if the original had none.
        #[arg(long)]
        network: bool,
        #[arg(long, default_value_t = 0)]
        ttl: u32,
    },
    /// List snapshots.
    Snapshots {
        /// Only snapshots of this sandbox.
        #[arg(long, default_value = "")]
        sandbox: String,
        #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
    /// Delete a snapshot.
    RmSnapshot { snapshot: String },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn mount(text: &str) -> Result<pb::Mount, String> {
    let (spec, readonly) = match text.strip_suffix(":ro") {
        Some(spec) => (spec, true),
        None => (text.strip_suffix(":rw").unwrap_or(text), false),
    };
    match spec.split_once(':') {
        Some((source, target)) if !source.is_empty() && target.starts_with('/') => {
            Ok(pb::Mount { source: source.to_owned(), target: target.to_owned(), readonly })
        }
        _ => Err(format!("{text:?} is not SOURCE:/TARGET[:ro]")),
    }
}

fn map(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs.iter().cloned().collect()
}

/// Runs `action`.
pub(super) async fn run(
    client: &mut AgentClient,
    out: &Output,
    action: &SandboxAction,
) -> Result<Exit, ClientError> {
    match action {
        SandboxAction::Create {
            id,
            rootfs,
            image,
            labels,
            cpus,
            memory,
            network,
            ttl,
            mounts,
            env,
            command,
        } => {
            let request = pb::CreateSandboxRequest {
                id: id.clone(),
                labels: map(labels),
                rootfs: rootfs.clone().unwrap_or_default(),
                image: image.clone().unwrap_or_default(),
                limits: Some(pb::ResourceLimits { vcpus: *cpus, memory_mib: *memory }),
                cmd: command.clone(),
                env: map(env),
                mounts: mounts.clone(),
                network: Some(pb::NetworkSpec { mode: network.clone() }),
                ttl_seconds: *ttl,
                ..Default::default()
            };
            let r = client.sandbox_create(&request, SLOW_CALL).await?;
            out.emit(&r, || format!("{} {} {}", r.id, r.state, r.ip_address).trim_end().to_owned());
        }
        SandboxAction::Ls { state, labels } => {
            let list = client.sandbox_list(state, map(labels)).await?;
            out.emit(&list, || {
                let mut text = format!("{:<24} {:<9} {:<15} LABELS", "ID", "STATE", "ADDRESS");
                for s in &list {
                    let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    text +=
                        &format!("\n{:<24} {:<9} {:<15} {}", s.id, s.state, s.ip_address, labels.join(","));
                }
                text
            });
        }
        SandboxAction::Inspect { id } => {
            let info = client.sandbox_inspect(id).await?;
            out.emit(&info, || inspect_text(&info));
        }
        SandboxAction::Run { id, process, command } => {
            let request = pb::RunRequest {
                id: id.clone(),
                cmd: command.clone(),
                env: map(&process.env),
                working_dir: process.workdir.clone().unwrap_or_default(),
                user: process.user.clone().unwrap_or_default(),
                tty: process.tty,
                timeout_seconds: process.timeout,
            };
            // The run's own timeout bounds it; without one it may take as long as it takes.
            let deadline = Duration::from_secs(if process.timeout > 0 {
                u64::from(process.timeout) + 30
            } else {
                86_400
            });
            let exit = client.sandbox_run(&request, deadline, write_output).await?;
            return Ok(finish(&exit));
        }
        SandboxAction::Exec { id, process, command } => return exec(client, id, process, command).await,
        SandboxAction::Stop { id, timeout } => {
            client.sandbox_stop(id, *timeout).await?;
            out.emit(&serde_json::json!({ "id": id, "stopped": true }), || format!("{id} stopped"));
        }
        SandboxAction::Rm { id, force } => {
            client.sandbox_remove(id, *force).await?;
            out.emit(&serde_json::json!({ "id": id, "removed": true }), || format!("{id} removed"));
        }
        SandboxAction::Events { id, action, labels } => {
            let request =
                pb::SandboxEventsRequest { id: id.clone(), action: action.clone(), labels: map(labels) };
            client
                .sandbox_events(&request, Duration::MAX, |event| {
                    let mut attributes: Vec<String> =
                        event.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    attributes.sort();
                    let line = format!("{} {} {}", event.sandbox_id, event.action, attributes.join(" "));
                    out.emit(&event, || line.trim_end().to_owned());
                    true
                })
                .await?;
        }
        SandboxAction::Checkpoint { id, name, labels } => {
            let request =
                pb::CheckpointRequest { sandbox_id: id.clone(), name: name.clone(), labels: map(labels) };
            let r = client.sandbox_checkpoint(&request, SLOW_CALL).await?;
            out.emit(&r, || format!("{} {} {}", r.snapshot_id, r.created_at, r.snapshot_dir));
        }
        SandboxAction::Restore { snapshot, id, labels, network, ttl } => {
            let request = pb::RestoreRequest {
                id: id.clone(),
                snapshot_id: snapshot.clone(),
                labels: map(labels),
                network_override: *network,
                ttl_seconds: *ttl,
            };
            let r = client.sandbox_restore(&request, SLOW_CALL).await?;
            out.emit(&r, || format!("{} {}", r.id, r.ip_address).trim_end().to_owned());
        }
        SandboxAction::Snapshots { sandbox, labels } => {
            let list = client.sandbox_snapshots(sandbox, map(labels)).await?;
            out.emit(&list, || {
                let mut text = format!("{:<18} {:<24} {:<16} {:<21} DIR", "ID", "SANDBOX", "NAME", "CREATED");
                for s in &list {
                    text += &format!(
                        "\n{:<18} {:<24} {:<16} {:<21} {}",
                        s.id, s.sandbox_id, s.name, s.created_at, s.snapshot_dir
                    );
                }
                text
            });
        }
        SandboxAction::RmSnapshot { snapshot } => {
            client.sandbox_delete_snapshot(snapshot).await?;
            out.emit(&serde_json::json!({ "snapshot": snapshot, "deleted": true }), || {
                format!("{snapshot} deleted")
            });
        }
    }
    Ok(Exit::Success)
}

fn inspect_text(info: &pb::SandboxInfo) -> String {
    let network = info.network.clone().unwrap_or_default();
    let limits = info.limits.unwrap_or_default();
    let mut labels: Vec<String> = info.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let mut text = format!(
        "id:        {}\nstate:     {}\naddress:   {} (gateway {}, interface {})\nlimits:    {} cpus, {} MiB\nlabels:    {}\ncreated:   {}\nready:     {}",
        info.id,
        info.state,
        network.ip_address,
        network.gateway,
        network.tap_name,
        limits.vcpus,
        limits.memory_mib,
        labels.join(","),
        info.created_at,
        info.ready_at,
    );
    if info.last_exited_at > 0 {
        text += &format!("\nexited:    {} (code {})", info.last_exited_at, info.last_exit_code);
    }
    if !info.error.is_empty() {
        text += &format!("\nerror:     {}", info.error);
    }
    text
}

fn write_output(item: &SandboxOutput) {
    if item.stream == "stderr" {
        let mut stderr = std::io::stderr();
        let _ = stderr.write_all(&item.data);
        let _ = stderr.flush();
    } else {
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(&item.data);
        let _ = stdout.flush();
    }
}

/// The exit item as agentctl's exit code (its note, e.g. a timeout, on stderr).
fn finish(exit: &SandboxOutput) -> Exit {
    if !exit.data.is_empty() {
        eprintln!("arcbox-agentctl sandbox: {}", String::from_utf8_lossy(&exit.data));
    }
    Exit::Passthrough(exit.exit_code.clamp(0, 255) as u8)
}

async fn exec(
    client: &mut AgentClient,
    id: &str,
    process: &ProcessArgs,
    command: &[String],
) -> Result<Exit, ClientError> {
    let tty_size = process.tty.then(|| {
        let (rows, cols) = window_size().unwrap_or((24, 80));
        pb::TerminalSize { width: cols, height: rows }
    });
    let request = pb::ExecRequest {
        id: id.to_owned(),
        cmd: command.to_vec(),
        env: map(&process.env),
        working_dir: process.workdir.clone().unwrap_or_default(),
        user: process.user.clone().unwrap_or_default(),
        tty: process.tty,
        tty_size,
        timeout_seconds: process.timeout,
    };
    let (mut output, mut input) = client.sandbox_exec(&request).await?.split();
    let raw = RawTerminal::enter(process.tty);
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(async move {
        let mut local = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match local.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stdin_tx.send(buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut winch = signal(SignalKind::window_change()).ok();
    let mut stdin_open = true;
    let exit = loop {
        tokio::select! {
            item = output.next() => match item? {
                Some(item) if item.done => break item,
                Some(item) => write_output(&item),
                None => return Err(ClientError::Disconnected),
            },
            data = stdin_rx.recv(), if stdin_open => match data {
                Some(data) => input.write(&data).await?,
                None => {
                    stdin_open = false;
                    input.close().await?;
                }
            },
            Some(()) = recv(&mut winch) => {
                if let Some((rows, cols)) = window_size() {
                    input.resize(cols, rows).await?;
                }
            }
        }
    };
    drop(raw);
    Ok(finish(&exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_and_labels_parse_as_docker_writes_them() {
        let ro = mount("/srv/data:/data:ro").unwrap();
        assert_eq!((ro.source.as_str(), ro.target.as_str(), ro.readonly), ("/srv/data", "/data", true));
        assert!(!mount("/a:/b").unwrap().readonly);
        assert!(mount("/a:relative").is_err());
        assert!(mount("nocolon").is_err());
        assert_eq!(key_value("a=b=c").unwrap(), ("a".to_owned(), "b=c".to_owned()));
        assert!(key_value("=x").is_err());
    }
}
