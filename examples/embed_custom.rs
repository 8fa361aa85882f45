//! Embedding the agent core: the standard guest agent (every built-in
//! request) over a fake machine, plus a custom handler for an extension
//! request type, served on a custom transport (in-memory duplex pipes
//! instead of sockets), and called with the host client. An embedder's own
//! guest binary does the same over `guest::linux::LinuxGuestOs`.
//!
//! Run: `cargo run --example embed_custom`

use std::time::Duration;

use arcbox_agent_core::config::AgentConfig;
use arcbox_agent_core::fake::FakeGuest;
use arcbox_agent_core::guest::{Guest, GuestSettings};
use arcbox_agent_core::new_boot_id;
use arcbox_agent_core::protocol::{Frame, response_code};
use arcbox_agent_core::rpc::{RequestContext, RpcError, ServerConfig, UnaryHandler};
use arcbox_agent_core::transport::Transport;
use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
use prost::Message as _;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// An embedder's own request type, in the extension range (0x0100-0x0FFF).
const WORD_COUNT_REQUEST: u32 = 0x0F10;

/// Request and response messages of the custom call, defined with prost.
#[derive(Clone, PartialEq, prost::Message)]
struct WordCountRequest {
    #[prost(string, tag = "1")]
    text: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WordCountResponse {
    #[prost(uint32, tag = "1")]
    words: u32,
}

/// The custom handler: typed in, typed out; errors become Error frames.
struct WordCounter;

impl UnaryHandler for WordCounter {
    type Request = WordCountRequest;
    type Response = WordCountResponse;

    async fn handle(
        &self,
        ctx: RequestContext<'_>,
        request: WordCountRequest,
    ) -> Result<WordCountResponse, RpcError> {
        if request.text.is_empty() {
            return Err(RpcError::bad_request("text is empty"));
        }
        println!("agent: counting words for trace {}", ctx.trace_id);
        Ok(WordCountResponse { words: request.text.split_whitespace().count() as u32 })
    }
}

/// A custom transport: each "connection" is an in-memory duplex pipe
/// handed over a channel. A VMM could do the same with its own device.
struct PipeTransport {
    incoming: mpsc::Receiver<DuplexStream>,
}

impl Transport for PipeTransport {
    type Stream = DuplexStream;

    async fn accept(&mut self) -> std::io::Result<(DuplexStream, String)> {
        match self.incoming.recv().await {
            Some(stream) => Ok((stream, "pipe".to_owned())),
            // No more connections will come: park, as a listener would.
            None => std::future::pending().await,
        }
    }

    fn local_address(&self) -> String {
        "pipe:in-memory".to_owned()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The standard guest agent in serve mode (no init plan: the machine
    //    is not ours), plus the custom handler.
    let settings =
        GuestSettings { boot_id: new_boot_id(), pid1: false, init_mode: false, kernel_uptime_secs: 0.0 };
    let stop = CancellationToken::new();
    let mut guest = Guest::assemble(&FakeGuest::new(), &AgentConfig::default(), settings, &[], stop.clone());
    guest.router_mut().unary_code(WORD_COUNT_REQUEST, WordCounter);

    // 2. Boot it on the custom transport.
    let (connect, incoming) = mpsc::channel(4);
    let transport = PipeTransport { incoming };
    let server = tokio::spawn(guest.run(|| async { Ok(transport) }, ServerConfig::default(), &()));

    // 3. A client on one end of a pipe.
    let (client_end, agent_end) = tokio::io::duplex(64 * 1024);
    connect.send(agent_end).await?;
    let options = ConnectOptions { call_timeout: Duration::from_secs(2), ..ConnectOptions::default() };
    let mut client = AgentClient::from_stream(client_end, options);

    let pong = client.ping(None).await?;
    println!("client: {} (agent {}, serves {:04X?})", pong.message, pong.version, pong.capabilities);
    assert!(pong.capabilities.contains(&WORD_COUNT_REQUEST), "the custom type is advertised");

    let request = WordCountRequest { text: "the quick brown fox".to_owned() };
    let answer: Frame = client.call_raw(WORD_COUNT_REQUEST, &request.encode_to_vec()).await?;
    assert_eq!(answer.msg_type, response_code(WORD_COUNT_REQUEST));
    let words = WordCountResponse::decode(answer.payload)?.words;
    println!("client: {words} words");
    assert_eq!(words, 4);

    let refused = client.call_raw(WORD_COUNT_REQUEST, &WordCountRequest::default().encode_to_vec()).await?;
    let err = arcbox_agent_core::protocol::ErrorPayload::decode(&refused.payload)?;
    println!("client: empty text refused with {err}");
    assert_eq!(err.code, 400);

    stop.cancel();
    server.await??;
    Ok(())
}
