//! The connecting side of the transports: [`Address`] parsing, the
//! host-side [`connect`]or (vsock, hybrid vsock, Unix, TCP) and
//! [`AnyStream`], one stream type over all of them. The listening side
//! (the guest's listeners and accept loop) is in `arcbox-agent-core`.

mod address;
mod connect;
mod stream;

pub use address::{Address, AddressError, VSOCK_CID_ANY, VSOCK_CID_HOST};
pub use connect::{connect, connect_once, hybrid_connect};
pub use stream::AnyStream;
