//! `arcbox-agent`: the guest agent. Serves the agent core with the Linux
//! implementations on vsock port 1024 (or `--listen`).

fn main() -> std::process::ExitCode {
    arcbox_agent_bin::guest::main()
}
