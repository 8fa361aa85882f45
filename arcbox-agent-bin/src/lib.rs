//! The thin binaries of arcbox-agent: `arcbox-agent` (guest) and
//! `arcbox-agentctl` (host CLI). Argument parsing and wiring only; the work
//! is in `arcbox-agent-core`.
//!
//! # Layout
//! - [`guest`]: the guest agent's entry point and wiring of the Linux parts.
//! - [`ctl`]: the host CLI: commands, human and JSON output.

pub mod ctl;
pub mod guest;
