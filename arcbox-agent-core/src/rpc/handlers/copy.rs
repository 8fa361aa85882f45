//! The copy sessions: CopyIn (a tar stream from the host unpacked in the
//! guest) and CopyOut (a guest path packed and streamed to the host), over
//! [`crate::copy`] and the confined files.
//!
//! The tar code blocks (it is syscalls), so it runs on the blocking pool
//! and meets the session through a channel in each direction. Neither
//! side buffers without bound: a copy-in's host may send at most
//! [`COPY_IN_WINDOW_BYTES`] beyond what the unpacker has taken (announced
//! and returned in CopyAck frames), and a copy-out sends at most the
//! host's `window_bytes` beyond the `consumed` it reports, while the
//! packer waits on a channel of two chunks. Nothing is spooled to disk.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf as _, Bytes};
use prost::Message as _;
use tokio::sync::{Notify, mpsc};

use super::files::{error_code, root_of};
use crate::copy::{self, CopyError, CopyStats, PackOptions, UnpackOptions};
use crate::protocol::proto::agent::{CopyAck, CopyChunk, CopyInRequest, CopyOutRequest, CopyResult};
use crate::protocol::{ErrorCode, Frame, MessageType};
use crate::rpc::{HandlerError, RequestContext, RpcError, Session, SessionHandler};
use crate::sys::ConfinedFs;

/// Archive bytes a copy-in's host may send beyond what is unpacked.
pub const COPY_IN_WINDOW_BYTES: u64 = 2 << 20;
/// A copy-out's window when the request says 0.
pub const DEFAULT_COPY_OUT_WINDOW_BYTES: u64 = 1 << 20;
/// The archive bytes one CopyOutput frame carries at most (a window is
/// never smaller).
pub const COPY_CHUNK_BYTES: usize = 256 << 10;

/// The byte limit of a request: the agent's, or less when asked.
fn limit_of<F: ConfinedFs>(files: &F, asked: u64) -> u64 {
    let agent = files.limits().max_copy_bytes;
    if asked == 0 { agent } else { asked.min(agent) }
}

/// The wire error for a failed copy; the message names the entry.
fn rpc_error(err: CopyError) -> RpcError {
    let code = match &err {
        CopyError::Fs(e) | CopyError::Entry { source: e, .. } => error_code(e),
        CopyError::Refused { .. } | CopyError::Archive(_) => ErrorCode::BAD_REQUEST,
        CopyError::Destination { .. } => ErrorCode::CONFLICT,
        CopyError::TooLarge { .. } => ErrorCode::PAYLOAD_TOO_LARGE,
        CopyError::Sink(_) => ErrorCode::INTERNAL,
    };
    RpcError::new(code, err.to_string())
}

fn result_message(stats: &CopyStats) -> CopyResult {
    CopyResult {
        entries: stats.entries,
        files: stats.files,
        dirs: stats.dirs,
        symlinks: stats.symlinks,
        hard_links: stats.hard_links,
        file_bytes: stats.file_bytes,
        archive_bytes: stats.archive_bytes,
        skipped: stats.skipped,
    }
}

/// A CopyChunk frame from the host, or a 400 for anything else.
fn input(frame: Frame) -> Result<CopyChunk, HandlerError> {
    if frame.msg_type != MessageType::CopyInput.code() {
        let message = format!("a copy session takes CopyChunk frames (0x0122), not 0x{:04X}", frame.msg_type);
        return Err(RpcError::bad_request(message).into());
    }
    Ok(CopyChunk::decode(frame.payload).map_err(RpcError::from)?)
}

fn shutting_down() -> HandlerError {
    RpcError::unavailable("the agent is shutting down").into()
}

/// Serves CopyIn.
pub(super) struct CopyIn<F>(pub Arc<F>);

impl<F: ConfinedFs> SessionHandler for CopyIn<F> {
    type Request = CopyInRequest;

    async fn handle<'a>(
        &'a self,
        _: RequestContext<'a>,
        r: CopyInRequest,
        session: Session<'a, '_>,
    ) -> Result<(), HandlerError> {
        let Session { out, mut inbound, shutdown } = session;
        let options = UnpackOptions {
            follow: r.follow_symlink,
            preserve_owner: r.preserve_owner,
            into_dir: r.into_dir,
            max_bytes: limit_of(&*self.0, r.max_bytes),
        };
        let (root, dest) = (root_of(&r.root)?, PathBuf::from(&r.path));
        let (tx, rx) = mpsc::unbounded_channel();
        let taken = Arc::new(Taken::default());
        let mut reader = ChannelReader { rx, current: Bytes::new(), ended: false, taken: Arc::clone(&taken) };
        let files = Arc::clone(&self.0);
        let mut unpacker =
            tokio::task::spawn_blocking(move || copy::unpack(&*files, &root, &dest, &options, &mut reader));
        let window = COPY_IN_WINDOW_BYTES;

        let outcome = {
            // Archive bytes to the unpacker, within the window (so the
            // unbounded channel holds at most a window).
            let read_frames = async {
                let tx = tx;
                let mut received: u64 = 0;
                while let Some(frame) = inbound.next().await? {
                    let chunk = input(frame)?;
                    received += chunk.data.len() as u64;
                    if received - taken.bytes.load(Ordering::Acquire) > window {
                        let message = "archive sent past its window (see CopyAck)";
                        return Err::<(), HandlerError>(RpcError::bad_request(message).into());
                    }
                    if !chunk.data.is_empty() {
                        let _ = tx.send(Some(Bytes::from(chunk.data)));
                    }
                    if chunk.eof {
                        let _ = tx.send(None);
                        return std::future::pending().await;
                    }
                }
                Err(RpcError::bad_request("the host closed the copy before the end of the archive").into())
            };
            // Credit back as the unpacker takes bytes, a quarter window at a time.
            let send_acks = async {
                out.send(MessageType::CopyAck.code(), &CopyAck { consumed: 0, window }).await?;
                let mut acked = 0;
                loop {
                    let woken = taken.wake.notified();
                    let consumed = taken.bytes.load(Ordering::Acquire);
                    if consumed >= acked + window / 4 {
                        out.send(MessageType::CopyAck.code(), &CopyAck { consumed, window }).await?;
                        acked = consumed;
                        continue;
                    }
                    tokio::select! {
                        () = woken => {}
                        () = shutdown.cancelled() => return Err::<(), HandlerError>(shutting_down()),
                    }
                }
            };
            tokio::select! {
                joined = &mut unpacker => Ok(joined),
                Err(e) = read_frames => Err(e),
                Err(e) = send_acks => Err::<_, HandlerError>(e),
            }
        };
        let joined = match outcome {
            Ok(joined) => joined,
            Err(e) => {
                // The channel is closed: the unpacker stops at its next read
                // and removes what it staged; answer once it has.
                let _ = unpacker.await;
                tracing::info!(root = r.root, path = r.path, error = %e, "copy in stopped");
                return Err(e);
            }
        };
        let stats =
            joined.map_err(|e| RpcError::internal(format!("copy in panicked: {e}")))?.map_err(rpc_error)?;
        tracing::info!(
            root = r.root,
            path = r.path,
            entries = stats.entries,
            bytes = stats.archive_bytes,
            "copied in"
        );
        out.send(MessageType::CopyResult.code(), &result_message(&stats)).await?;
        Ok(())
    }
}

/// What the unpacker has taken, for the credit sent back.
#[derive(Default)]
struct Taken {
    bytes: AtomicU64,
    wake: Notify,
}

/// The archive as the blocking unpacker reads it: chunks from the session,
/// `None` for the host's end; a closed channel without it is an
/// interruption.
struct ChannelReader {
    rx: mpsc::UnboundedReceiver<Option<Bytes>>,
    current: Bytes,
    ended: bool,
    taken: Arc<Taken>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Some(chunk)) => self.current = chunk,
                Some(None) => self.ended = true,
                None => {
                    let message = "the host stopped before the end of the archive";
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, message));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        self.taken.bytes.fetch_add(n as u64, Ordering::AcqRel);
        if self.current.is_empty() {
            self.taken.wake.notify_one();
        }
        Ok(n)
    }
}

/// Serves CopyOut.
pub(super) struct CopyOut<F>(pub Arc<F>);

impl<F: ConfinedFs> SessionHandler for CopyOut<F> {
    type Request = CopyOutRequest;

    async fn handle<'a>(
        &'a self,
        _: RequestContext<'a>,
        r: CopyOutRequest,
        session: Session<'a, '_>,
    ) -> Result<(), HandlerError> {
        let Session { out, mut inbound, shutdown } = session;
        let options = PackOptions { follow: r.follow_symlink, max_bytes: limit_of(&*self.0, r.max_bytes) };
        let window = match r.window_bytes {
            0 => DEFAULT_COPY_OUT_WINDOW_BYTES,
            n => n.max(COPY_CHUNK_BYTES as u64),
        };
        let (root, src) = (root_of(&r.root)?, PathBuf::from(&r.path));
        let (tx, mut rx) = mpsc::channel(2);
        let files = Arc::clone(&self.0);
        let packer = tokio::task::spawn_blocking(move || {
            let mut sink = ChunkWriter { tx, buf: Vec::with_capacity(COPY_CHUNK_BYTES) };
            let stats = copy::pack(&*files, &root, &src, &options, &mut sink)?;
            sink.flush().map_err(CopyError::Sink)?;
            Ok::<_, CopyError>(stats)
        });
        let consumed = AtomicU64::new(0);
        let wake = Notify::new();

        let sent = {
            let read_frames = async {
                while let Some(frame) = inbound.next().await? {
                    let chunk = input(frame)?;
                    if chunk.consumed > consumed.fetch_max(chunk.consumed, Ordering::AcqRel) {
                        wake.notify_one();
                    }
                }
                // The host closed its side: it reads no more.
                Err::<(), HandlerError>(
                    RpcError::bad_request("the host closed the copy before its end").into(),
                )
            };
            let send = async {
                let mut sent: u64 = 0;
                while let Some(data) = rx.recv().await {
                    let len = data.len() as u64;
                    loop {
                        let woken = wake.notified();
                        let outstanding = sent.saturating_sub(consumed.load(Ordering::Acquire));
                        if outstanding == 0 || outstanding + len <= window {
                            break;
                        }
                        tokio::select! {
                            () = woken => {}
                            () = shutdown.cancelled() => return Err(shutting_down()),
                        }
                    }
                    out.send(MessageType::CopyOutput.code(), &CopyChunk { data, eof: false, consumed: 0 })
                        .await?;
                    sent += len;
                }
                Ok::<_, HandlerError>(sent)
            };
            tokio::select! {
                sent = send => sent,
                Err(e) = read_frames => Err(e),
            }
        };
        // Closing the channel makes a packer still writing stop.
        drop(rx);
        let packed = packer.await.map_err(|e| RpcError::internal(format!("copy out panicked: {e}")))?;
        let stats = match (sent, packed) {
            (_, Err(e @ CopyError::TooLarge { .. })) | (Ok(_), Err(e)) => return Err(rpc_error(e).into()),
            (Err(e), _) => return Err(e),
            (Ok(_), Ok(stats)) => stats,
        };
        tracing::info!(
            root = r.root,
            path = r.path,
            entries = stats.entries,
            bytes = stats.archive_bytes,
            "copied out"
        );
        out.send(MessageType::CopyResult.code(), &result_message(&stats)).await?;
        Ok(())
    }
}

/// The archive as the blocking packer writes it: cut into chunks for the
/// session, which takes them as the host's credit allows.
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(COPY_CHUNK_BYTES));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the copy session ended"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(COPY_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == COPY_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() { Ok(()) } else { self.send() }
    }
}
