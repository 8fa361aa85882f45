//! The guest agent's command line. Everything else is the core's
//! `guest::linux` boot sequence.

use std::path::PathBuf;
use std::process::ExitCode;

use arcbox_agent_core::guest::linux::{GuestArgs, GuestMode};
use arcbox_agent_core::protocol::DEFAULT_MAX_FRAME_BYTES;
use arcbox_agent_wire::transport::Address;
use clap::{Parser, Subcommand};

/// arcbox-agent: guest agent for Linux micro-VMs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Address to serve RPCs on (vsock:any:PORT, unix:/path or tcp:HOST:PORT) [default: vsock:any:1024].
    #[arg(long, global = true)]
    listen: Option<Address>,
    /// Once listening, dial the host (vsock CID 2) on this port and send
    /// `READY <boot_id>\n`, so the host need not poll. Also read from the
    /// kernel command line key `arcbox_agent.ready_port=`.
    #[arg(long, global = true)]
    ready_port: Option<u32>,
    /// Largest request frame accepted, in bytes.
    #[arg(long, global = true, default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// TOML config file (default /etc/arcbox/agent.toml, or the kernel
    /// command line key `arcbox_agent.config=`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Mode {
    /// Run the init plan and serve, under another init (subreaper).
    Init,
    /// Only serve (the default when not PID 1).
    Serve,
}

/// Parses the command line and runs the guest agent.
pub fn main() -> ExitCode {
    let args = Args::parse();
    arcbox_agent_core::guest::linux::main(GuestArgs {
        mode: match args.mode {
            Some(Mode::Init) => GuestMode::Init,
            Some(Mode::Serve) => GuestMode::Serve,
            None => GuestMode::Auto,
        },
        listen: args.listen.unwrap_or_else(GuestArgs::default_listen),
        ready_port: args.ready_port,
        max_frame_bytes: args.max_frame_bytes,
        config: args.config,
    })
}
