//! Copy in and out of the guest as tar streams (CopyIn, CopyOut sessions):
//! the archive flows within the agent's credit (copy-in) or returns credit
//! as it is written out (copy-out), so neither side holds more than a
//! window of it, whatever its size.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::{AgentClient, ClientError, expect_type};
use crate::protocol::MessageType;
use crate::protocol::proto::agent::{CopyAck, CopyChunk, CopyInRequest, CopyOutRequest, CopyResult};

/// The copy-out window the client asks for when the request says 0.
pub const DEFAULT_COPY_WINDOW: u64 = 2 << 20;
/// The archive bytes one CopyChunk frame carries at most.
const CHUNK_BYTES: usize = 256 << 10;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentClient<S> {
    /// Sends the tar archive `data` into the guest, unpacked as `request`
    /// says (docker cp semantics; see docs/PROTOCOL.md), on this
    /// connection (the session takes it over). Returns what was unpacked;
    /// an Error frame becomes [`ClientError::Remote`] as soon as it comes,
    /// even while the archive is still being sent.
    pub async fn copy_in<R: AsyncRead + Unpin>(
        &mut self,
        request: CopyInRequest,
        mut data: R,
    ) -> Result<CopyResult, ClientError> {
        let (mut reader, mut writer) = self.open_session(MessageType::CopyInRequest, &request).await?.split();
        // The agent's frames are read in a task of their own, so waiting for
        // one never cancels a read mid-frame.
        let (frames_tx, mut frames) = mpsc::channel(4);
        let pump = AbortOnDrop(tokio::spawn(async move {
            loop {
                let frame = reader.next().await;
                let last = !matches!(frame, Ok(Some(_)));
                if frames_tx.send(frame).await.is_err() || last {
                    return;
                }
            }
        }));
        let (mut sent, mut consumed, mut window) = (0u64, 0u64, 0u64);
        let mut buf = vec![0; CHUNK_BYTES];
        let mut ended = false;
        let result = loop {
            let room = window.saturating_sub(sent - consumed).min(CHUNK_BYTES as u64) as usize;
            tokio::select! {
                frame = frames.recv() => {
                    let frame = match frame {
                        Some(Ok(Some(frame))) => frame,
                        Some(Ok(None)) | None => break Err(ClientError::Disconnected),
                        Some(Err(e)) => break Err(e),
                    };
                    if frame.msg_type == MessageType::CopyAck.code() {
                        let ack: CopyAck = prost::Message::decode(frame.payload).map_err(ClientError::Decode)?;
                        (consumed, window) = (ack.consumed.max(consumed), ack.window);
                        continue;
                    }
                    expect_type(&frame, MessageType::CopyResult.code())?;
                    break prost::Message::decode(frame.payload).map_err(ClientError::Decode);
                }
                read = data.read(&mut buf[..room]), if room > 0 && !ended => {
                    let n = read.map_err(ClientError::Local)?;
                    let chunk = CopyChunk { data: buf[..n].to_vec(), eof: n == 0, consumed: 0 };
                    writer.send(MessageType::CopyInput.code(), &chunk).await?;
                    sent += n as u64;
                    ended = n == 0;
                }
            }
        };
        drop(pump);
        result
    }

    /// Packs `request.path` in the guest and writes the tar archive to
    /// `out`, on this connection (the session takes it over). On an error
    /// `out` may hold part of an archive: discard it.
    pub async fn copy_out<W: AsyncWrite + Unpin>(
        &mut self,
        mut request: CopyOutRequest,
        mut out: W,
    ) -> Result<CopyResult, ClientError> {
        if request.window_bytes == 0 {
            request.window_bytes = DEFAULT_COPY_WINDOW;
        }
        let window = request.window_bytes;
        let mut session = self.open_session(MessageType::CopyOutRequest, &request).await?;
        let (mut consumed, mut returned) = (0u64, 0u64);
        loop {
            let frame = session.next().await?.ok_or(ClientError::Disconnected)?;
            if frame.msg_type == MessageType::CopyResult.code() {
                out.flush().await.map_err(ClientError::Local)?;
                return prost::Message::decode(frame.payload).map_err(ClientError::Decode);
            }
            expect_type(&frame, MessageType::CopyOutput.code())?;
            let chunk: CopyChunk = prost::Message::decode(frame.payload).map_err(ClientError::Decode)?;
            out.write_all(&chunk.data).await.map_err(ClientError::Local)?;
            consumed += chunk.data.len() as u64;
            if consumed - returned >= window / 4 {
                let credit = CopyChunk { data: Vec::new(), eof: false, consumed };
                session.send(MessageType::CopyInput.code(), &credit).await?;
                returned = consumed;
            }
        }
    }
}

/// Aborts a task when dropped (the frame pump of an abandoned copy).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
