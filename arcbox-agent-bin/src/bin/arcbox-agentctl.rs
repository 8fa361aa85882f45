//! `arcbox-agentctl`: talk to an arcbox-agent from the host.

fn main() -> std::process::ExitCode {
    arcbox_agent_bin::ctl::main()
}
