//! The RPC core: a [`Router`] from request type to handler, the
//! per-connection loop and the accept loop, and one handler module per
//! request family in [`handlers`].

mod connection;
mod error;
pub mod handlers;
mod router;
mod server;
mod session;

pub use connection::{ConnectionEnd, DEFAULT_FRAME_READ_TIMEOUT, is_peer_gone, serve_connection};
pub use error::RpcError;
pub use router::{
    BoxFuture, Handler, HandlerError, ImmediateHandler, RequestContext, Responder, Route, Router,
    StreamingHandler, UnaryHandler,
};
pub use server::{DEFAULT_MAX_CONNECTIONS, Server, ServerConfig, ServerStats};
pub use session::{Inbound, InboundError, Session, SessionCall, SessionHandler};
