//! The host side of an exec session: output events in order, stdin out
//! within the agent's window, and the output credit returned as events
//! are consumed, all without the caller managing either window.
//!
//! A task owns the session's write half: it sends stdin as the agent's
//! window allows and returns output credit as the caller consumes events,
//! so neither direction ever waits for the other.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{ClientError, ClientSession, SessionReader, SessionWriter};
use crate::protocol::MessageType;
use crate::protocol::proto::agent::{ExecGap, ExecInput, ExecInputAck, ExecOutput, ExecStatus};

/// Output credit the client asks for when the caller says 0.
pub const DEFAULT_EXEC_WINDOW: u64 = 1024 * 1024;
/// Largest stdin frame sent.
const STDIN_CHUNK: usize = 64 * 1024;

/// One event of an exec session.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// Output bytes of stream 1 (stdout or the terminal) or 2 (stderr).
    Output {
        /// 1 or 2.
        stream: u32,
        /// Offset of `data[0]` in the stream.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Bytes `[from, to)` of a stream were dropped before this session read them.
    Gap {
        /// 1 or 2.
        stream: u32,
        /// First missing offset.
        from: u64,
        /// First offset present again.
        to: u64,
    },
    /// The exit; the last event, after every output byte.
    Exit(ExecStatus),
}

enum StdinCommand {
    Data(Vec<u8>),
    Eof,
}

/// Writes an exec's stdin; clones share the session.
#[derive(Clone)]
pub struct ExecStdin {
    tx: mpsc::Sender<StdinCommand>,
}

impl ExecStdin {
    /// Queues `data` for stdin; waits while earlier input is still queued
    /// (the agent's window bounds what is in flight).
    pub async fn write(&self, data: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.tx.send(StdinCommand::Data(data.into())).await.map_err(|_| ClientError::Disconnected)
    }

    /// Ends stdin (a terminal gets its EOF character).
    pub async fn close(&self) -> Result<(), ClientError> {
        self.tx.send(StdinCommand::Eof).await.map_err(|_| ClientError::Disconnected)
    }
}

/// An attached exec: events in, stdin out.
pub struct ExecSession<S> {
    /// The exec's id (for wait, signal and resize on another connection).
    pub exec_id: String,
    /// Its pid in the guest (0 when attached by id).
    pub pid: u32,
    reader: SessionReader<S>,
    consumed: u64,
    consumed_tx: watch::Sender<u64>,
    acked_tx: watch::Sender<(u64, u64)>,
    stdin: ExecStdin,
    writer: JoinHandle<Result<(), ClientError>>,
}

impl<S> ExecSession<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    pub(super) fn new(exec_id: String, pid: u32, session: ClientSession<S>, window: u64) -> Self {
        let (reader, writer) = session.split();
        let (consumed_tx, consumed_rx) = watch::channel(0);
        let (acked_tx, acked_rx) = watch::channel((0, 0));
        let (stdin_tx, stdin_rx) = mpsc::channel(4);
        let window = if window == 0 { DEFAULT_EXEC_WINDOW } else { window };
        let writer = tokio::spawn(send_input(writer, stdin_rx, consumed_rx, acked_rx, window));
        Self {
            exec_id,
            pid,
            reader,
            consumed: 0,
            consumed_tx,
            acked_tx,
            stdin: ExecStdin { tx: stdin_tx },
            writer,
        }
    }

    /// A handle for writing stdin (the exec must have been started, and
    /// attached, with stdin).
    pub fn stdin(&self) -> ExecStdin {
        self.stdin.clone()
    }

    /// The next event; `None` if the agent closed without an exit (it is
    /// shutting down: the exec may still be waited for elsewhere).
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        loop {
            if self.writer.is_finished() {
                // The writer only stops on a broken connection.
                return Err(ClientError::Disconnected);
            }
            let Some(frame) = self.reader.next().await? else { return Ok(None) };
            let decode = |e| ClientError::Decode(e);
            let event = match MessageType::from_u32(frame.msg_type) {
                Some(MessageType::ExecOutput) => {
                    let output: ExecOutput = prost::Message::decode(frame.payload).map_err(decode)?;
                    self.consumed += output.data.len() as u64;
                    self.consumed_tx.send_replace(self.consumed);
                    ExecEvent::Output { stream: output.stream, offset: output.offset, data: output.data }
                }
                Some(MessageType::ExecGap) => {
                    let gap: ExecGap = prost::Message::decode(frame.payload).map_err(decode)?;
                    ExecEvent::Gap { stream: gap.stream, from: gap.from_offset, to: gap.to_offset }
                }
                Some(MessageType::ExecExit) => {
                    ExecEvent::Exit(prost::Message::decode(frame.payload).map_err(decode)?)
                }
                Some(MessageType::ExecInputAck) => {
                    let ack: ExecInputAck = prost::Message::decode(frame.payload).map_err(decode)?;
                    self.acked_tx.send_replace((ack.written, ack.window));
                    continue;
                }
                _ => {
                    return Err(ClientError::UnexpectedType {
                        expected: MessageType::ExecOutput.code(),
                        received: frame.msg_type,
                    });
                }
            };
            return Ok(Some(event));
        }
    }

    /// Reads events to the exit, collecting stdout and stderr.
    pub async fn collect(mut self) -> Result<(Vec<u8>, Vec<u8>, ExecStatus), ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next_event().await? {
                Some(ExecEvent::Output { stream: 2, data, .. }) => stderr.extend(data),
                Some(ExecEvent::Output { data, .. }) => stdout.extend(data),
                Some(ExecEvent::Gap { .. }) => {}
                Some(ExecEvent::Exit(status)) => return Ok((stdout, stderr, status)),
                None => return Err(ClientError::Disconnected),
            }
        }
    }
}

impl<S> Drop for ExecSession<S> {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// The write half's task: stdin within the agent's window, and output
/// credit returned once a quarter of the window is consumed.
async fn send_input<S: AsyncWrite>(
    mut writer: SessionWriter<S>,
    mut stdin: mpsc::Receiver<StdinCommand>,
    mut consumed: watch::Receiver<u64>,
    mut acked: watch::Receiver<(u64, u64)>,
    window: u64,
) -> Result<(), ClientError> {
    let mut sent_stdin: u64 = 0;
    let mut credit_returned: u64 = 0;
    let mut pending: Option<(Vec<u8>, usize)> = None;
    let mut eof_pending = false;
    let mut stdin_open = true;
    loop {
        let now_consumed = *consumed.borrow_and_update();
        let (written, stdin_window) = *acked.borrow_and_update();
        let stdin_credit = stdin_window.saturating_sub(sent_stdin.saturating_sub(written));
        let mut input = ExecInput::default();
        if let Some((data, at)) = pending.as_mut()
            && stdin_credit > 0
        {
            let len =
                (data.len() - *at).min(STDIN_CHUNK).min(usize::try_from(stdin_credit).unwrap_or(usize::MAX));
            input.data = data[*at..*at + len].to_vec();
            *at += len;
            sent_stdin += len as u64;
            if *at == data.len() {
                pending = None;
            }
        }
        if pending.is_none() && eof_pending {
            input.eof = true;
            eof_pending = false;
        }
        let credit_due = now_consumed.saturating_sub(credit_returned) >= window / 4;
        if !input.data.is_empty() || input.eof || credit_due {
            input.consumed = now_consumed;
            credit_returned = now_consumed;
            writer.send(MessageType::ExecInput.code(), &input).await?;
            continue;
        }
        tokio::select! {
            changed = consumed.changed() => if changed.is_err() { return Ok(()) },
            changed = acked.changed() => if changed.is_err() { return Ok(()) },
            command = stdin.recv(), if stdin_open && pending.is_none() && !eof_pending => match command {
                Some(StdinCommand::Data(data)) if !data.is_empty() => pending = Some((data, 0)),
                Some(StdinCommand::Data(_)) => {}
                Some(StdinCommand::Eof) => eof_pending = true,
                None => stdin_open = false,
            },
        }
    }
}
