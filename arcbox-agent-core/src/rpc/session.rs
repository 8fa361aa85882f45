//! Sessions: requests that take over their connection.
//!
//! Most requests are answered and the connection moves on to the next
//! request. Exec and copy-in cannot work that way: after the request the
//! host keeps sending (stdin, tar data) while the agent keeps answering
//! (output, progress). A [`SessionHandler`] gets both directions of the
//! connection: a [`Responder`] for frames out and an [`Inbound`] for
//! frames in, usable at the same time from one task.
//!
//! A session owns the rest of its connection: when the handler returns,
//! the agent closes its write side, discards what the host still sends
//! until the host closes (so a close never resets data in flight), and
//! ends the connection. Hosts open one connection per session.

use std::future::Future;
use std::time::Duration;

use arcbox_agent_wire::codec::FrameReader;
use bytes::Bytes;
use prost::Message as _;
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use super::RpcError;
use super::router::{BoxFuture, HandlerError, RequestContext, Responder};
use crate::protocol::{Frame, FrameError};

/// Why reading the host's next session frame failed.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The host sent a frame the reader rejects (too large, malformed).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The host closed or stalled in the middle of a frame.
    #[error("the host stopped in the middle of a frame")]
    Truncated,
    /// Reading failed.
    #[error("reading from the host failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<InboundError> for HandlerError {
    fn from(err: InboundError) -> Self {
        match err {
            InboundError::Io(err) => HandlerError::Io(err),
            other => HandlerError::Rpc(RpcError::bad_request(other.to_string())),
        }
    }
}

/// The host-to-agent half of a session: frames the host sends after the
/// request, read through the connection's own frame reader (so frames the
/// host sent right behind the request are not lost).
pub struct Inbound<'a> {
    stream: &'a mut (dyn AsyncRead + Send + Unpin),
    reader: &'a mut FrameReader,
    frame_read_timeout: Duration,
}

impl<'a> Inbound<'a> {
    /// Frames from `stream`, continuing `reader`'s buffer.
    pub fn new(
        stream: &'a mut (dyn AsyncRead + Send + Unpin),
        reader: &'a mut FrameReader,
        frame_read_timeout: Duration,
    ) -> Self {
        Self { stream, reader, frame_read_timeout }
    }

    /// The next frame, or `None` when the host closed its side between
    /// frames. Between frames it waits as long as the host likes; a started
    /// frame must arrive in full within the frame read timeout.
    pub async fn next(&mut self) -> Result<Option<Frame>, InboundError> {
        loop {
            if let Some(frame) = self.reader.next_buffered()? {
                return Ok(Some(frame));
            }
            let mid_frame = self.reader.mid_frame();
            let read = if mid_frame {
                tokio::time::timeout(self.frame_read_timeout, self.reader.fill(self.stream))
                    .await
                    .map_err(|_| InboundError::Truncated)?
            } else {
                self.reader.fill(self.stream).await
            };
            match read {
                Ok(0) if mid_frame => return Err(InboundError::Truncated),
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(err) if super::is_peer_gone(&err) && !mid_frame => return Ok(None),
                Err(err) => return Err(err.into()),
            }
        }
    }
}

/// Both directions of a session, and the server's shutdown signal.
pub struct Session<'a, 'w> {
    /// Frames to the host.
    pub out: &'a mut Responder<'w>,
    /// Frames from the host.
    pub inbound: Inbound<'a>,
    /// Fires when the agent shuts down; long sessions end early on it.
    pub shutdown: &'a CancellationToken,
}

/// A handler that takes over its connection (see the module docs).
pub trait SessionHandler: Send + Sync + 'static {
    /// The decoded request payload.
    type Request: prost::Message + Default + Send;
    /// Serves the session until done. An `Err` is answered with an Error
    /// frame before the connection closes.
    fn handle<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        request: Self::Request,
        session: Session<'a, '_>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// A session handler on raw frames: the form the router stores.
pub trait SessionCall: Send + Sync + 'static {
    /// Serves one session.
    fn call<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        payload: Bytes,
        session: Session<'a, '_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

pub(super) struct Typed<H>(pub H);

impl<H: SessionHandler> SessionCall for Typed<H> {
    fn call<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        payload: Bytes,
        session: Session<'a, '_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let request = H::Request::decode(payload).map_err(RpcError::from)?;
            self.0.handle(ctx, request, session).await
        })
    }
}

#[cfg(test)]
mod tests {
    use arcbox_agent_wire::client::{AgentClient, ConnectOptions};

    use super::*;
    use crate::protocol::MessageType;
    use crate::protocol::proto::agent::{ExecAttachRequest, ExecInput, ExecOutput};
    use crate::rpc::connection::serve_on_pipe;
    use crate::rpc::{ConnectionEnd, Router};

    /// Echoes each input frame's data back as output until EOF, then ends.
    struct Echo;

    impl SessionHandler for Echo {
        type Request = ExecAttachRequest;
        async fn handle<'a>(
            &'a self,
            _: RequestContext<'a>,
            request: ExecAttachRequest,
            mut session: Session<'a, '_>,
        ) -> Result<(), HandlerError> {
            if request.exec_id == "refuse" {
                return Err(RpcError::not_found("no such exec").into());
            }
            let mut offset = 0;
            while let Some(frame) = session.inbound.next().await? {
                let input = ExecInput::decode(frame.payload).map_err(RpcError::from)?;
                let output = ExecOutput { stream: 1, offset, data: input.data.clone() };
                offset += input.data.len() as u64;
                session.out.send(MessageType::ExecOutput.code(), &output).await?;
                if input.eof {
                    break;
                }
            }
            session.out.send(MessageType::ExecExit.code(), &ExecOutput::default()).await?;
            Ok(())
        }
    }

    async fn serve(
        request: &str,
        inputs: &[(&[u8], bool)],
    ) -> (Vec<ExecOutput>, Result<(), i32>, ConnectionEnd) {
        let mut router = Router::new();
        router.session(MessageType::ExecAttachRequest, Echo);
        let (host, server) = serve_on_pipe(router, "test", &CancellationToken::new());
        let mut client = AgentClient::from_stream(host, ConnectOptions::default());
        let attach = ExecAttachRequest { exec_id: request.into(), ..Default::default() };
        let session = client.open_session(MessageType::ExecAttachRequest, &attach).await.unwrap();
        let (mut reader, mut writer) = session.split();
        for (data, eof) in inputs {
            let input = ExecInput { data: data.to_vec(), eof: *eof, consumed: 0 };
            // The agent may have closed already (the refused case).
            let _ = writer.send(MessageType::ExecInput.code(), &input).await;
        }
        let mut outputs = Vec::new();
        let result = loop {
            match reader.next().await {
                Ok(Some(frame)) if frame.msg_type == MessageType::ExecExit.code() => break Ok(()),
                Ok(Some(frame)) => outputs.push(ExecOutput::decode(frame.payload).unwrap()),
                Ok(None) => panic!("closed before the exit frame"),
                Err(err) => break Err(err.code().unwrap()),
            }
        };
        assert!(reader.next().await.unwrap().is_none(), "the agent closes after the session");
        writer.close().await.unwrap();
        (outputs, result, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_session_reads_frames_sent_right_behind_the_request_and_writes_meanwhile() {
        let (outputs, result, end) = serve("e1", &[(b"hello ", false), (b"world", true)]).await;
        assert_eq!(result, Ok(()));
        let data: Vec<u8> = outputs.iter().flat_map(|o| o.data.clone()).collect();
        assert_eq!(data, b"hello world");
        assert_eq!(outputs[1].offset, 6);
        assert_eq!(end, ConnectionEnd::SessionEnded);
    }

    #[tokio::test]
    async fn a_failed_session_is_answered_with_an_error_frame_and_closed() {
        let (outputs, result, end) = serve("refuse", &[(b"ignored", true)]).await;
        assert!(outputs.is_empty());
        assert_eq!(result, Err(404));
        assert_eq!(end, ConnectionEnd::SessionEnded);
    }
}
