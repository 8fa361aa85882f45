//! `arcbox-agent`: the guest agent. Serves the agent core with the Linux
//! implementations on vsock port 1024 (or `--listen`).

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    arcbox_agent_bin::guest::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "arcbox-agent runs in a Linux guest only; on this host use arcbox-agentctl or arcbox-agent-sim"
    );
    std::process::ExitCode::from(1)
}
