//! The thin binaries of arcbox-agent: `arcbox-agent` (guest) and
//! `arcbox-agentctl` (host CLI). Argument parsing only; the work is in
//! `arcbox-agent-core` (the guest) and `arcbox-agent-wire` (the client).
//!
//! # Layout
//! - [`guest`] (Linux only): the guest agent's command line.
//! - [`ctl`]: the host CLI: commands, human and JSON output.

pub mod ctl;
#[cfg(target_os = "linux")]
pub mod guest;
