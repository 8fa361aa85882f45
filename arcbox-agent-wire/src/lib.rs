//! The wire between a host and arcbox-agent, and the host's client.
//!
//! This is what a VMM or sandbox library embeds to talk to the guest
//! agent: the ArcBox "V2" framing and message set (byte-compatible, with
//! arcbox-agent's extensions in a range of their own), the frame reader
//! and writer, addresses and the connector for vsock, hybrid vsock, Unix
//! and TCP, and a typed async client. It contains no guest code: the agent
//! (`arcbox-agent-core`) builds on this crate, not the other way round.
//!
//! # Layout
//! - [`protocol`]: frame codec without I/O, message type codes, the error
//!   payload, wire string values, well-known ports, generated protobuf messages.
//! - [`codec`]: [`codec::FrameReader`] and [`codec::FrameWriter`] on async
//!   streams, shared by the agent's connection loop and the client.
//! - [`transport`]: addresses, the connector, [`transport::AnyStream`].
//! - [`client`]: [`client::AgentClient`], typed calls with deadlines and trace ids.

#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod protocol;
pub mod transport;
