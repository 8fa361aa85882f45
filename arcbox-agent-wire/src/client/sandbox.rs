//! The sandbox family (`sandbox.v1`) from the host: CRUD and snapshots as
//! calls, Run and Events as streams, Exec as a session with raw stdin
//! frames (empty: EOF) and the resize extension frame.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{AgentClient, ClientError, ClientSession, SessionReader, SessionWriter, expect_type};
use crate::protocol::MessageType;
use crate::protocol::proto::sandbox::v1 as pb;

/// One piece of a Run's or an Exec's output (both items share this shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOutput {
    /// "stdout", "stderr" or "exit".
    pub stream: String,
    /// The bytes (for "exit": why it ended, when not by itself).
    pub data: Vec<u8>,
    /// The exit code (on the "exit" item).
    pub exit_code: i32,
    /// The last item.
    pub done: bool,
}

impl From<pb::RunOutput> for SandboxOutput {
    fn from(o: pb::RunOutput) -> Self {
        Self { stream: o.stream, data: o.data, exit_code: o.exit_code, done: o.done }
    }
}

impl From<pb::ExecOutput> for SandboxOutput {
    fn from(o: pb::ExecOutput) -> Self {
        Self { stream: o.stream, data: o.data, exit_code: o.exit_code, done: o.done }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AgentClient<S> {
    /// Creates a sandbox; answers once it runs.
    pub async fn sandbox_create(
        &mut self,
        request: &pb::CreateSandboxRequest,
        deadline: Duration,
    ) -> Result<pb::CreateSandboxResponse, ClientError> {
        self.call_with_deadline(MessageType::SandboxCreateRequest, request, deadline).await
    }

    /// Stops a sandbox (SIGTERM, SIGKILL after `timeout_seconds`; 0: 10 s).
    pub async fn sandbox_stop(&mut self, id: &str, timeout_seconds: u32) -> Result<(), ClientError> {
        let request = pb::StopSandboxRequest { id: id.to_owned(), timeout_seconds };
        let deadline = self.options.call_timeout + Duration::from_secs(timeout_seconds.max(10).into());
        self.call_with_deadline(MessageType::SandboxStopRequest, &request, deadline).await
    }

    /// Removes a sandbox (a running one only with `force`).
    pub async fn sandbox_remove(&mut self, id: &str, force: bool) -> Result<(), ClientError> {
        let request = pb::RemoveSandboxRequest { id: id.to_owned(), force };
        let deadline = self.options.call_timeout + Duration::from_secs(10);
        self.call_with_deadline(MessageType::SandboxRemoveRequest, &request, deadline).await
    }

    /// A sandbox's state, address and times.
    pub async fn sandbox_inspect(&mut self, id: &str) -> Result<pb::SandboxInfo, ClientError> {
        self.call(MessageType::SandboxInspectRequest, &pb::InspectSandboxRequest { id: id.to_owned() }).await
    }

    /// Sandboxes in `state` ("" any) with all of `labels`.
    pub async fn sandbox_list(
        &mut self,
        state: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<pb::SandboxSummary>, ClientError> {
        let request = pb::ListSandboxesRequest { state: state.to_owned(), labels };
        let response: pb::ListSandboxesResponse =
            self.call(MessageType::SandboxListRequest, &request).await?;
        Ok(response.sandboxes)
    }

    /// Runs a command in a sandbox, calling `on_output` for each piece of
    /// output; returns the exit item.
    pub async fn sandbox_run<F>(
        &mut self,
        request: &pb::RunRequest,
        deadline: Duration,
        mut on_output: F,
    ) -> Result<SandboxOutput, ClientError>
    where
        F: FnMut(&SandboxOutput) + Send,
    {
        let mut exit = None;
        self.call_streaming(MessageType::SandboxRunRequest, request, deadline, |frame| {
            expect_type(&frame, MessageType::SandboxRunOutput.code())?;
            let item =
                SandboxOutput::from(pb::RunOutput::decode(frame.payload).map_err(ClientError::Decode)?);
            if item.done {
                exit = Some(item);
                return Ok(false);
            }
            on_output(&item);
            Ok(true)
        })
        .await?;
        exit.ok_or(ClientError::Disconnected)
    }

    /// Starts an interactive command in a sandbox on a connection of its own.
    pub async fn sandbox_exec(&mut self, request: &pb::ExecRequest) -> Result<SandboxExec<S>, ClientError> {
        let session = self.open_session(MessageType::SandboxExecRequest, request).await?;
        Ok(SandboxExec::new(session))
    }

    /// Streams sandbox events matching `request` to `on_event` until it
    /// returns `false` or `deadline` passes.
    pub async fn sandbox_events<F>(
        &mut self,
        request: &pb::SandboxEventsRequest,
        deadline: Duration,
        mut on_event: F,
    ) -> Result<(), ClientError>
    where
        F: FnMut(pb::SandboxEvent) -> bool + Send,
    {
        self.call_streaming(MessageType::SandboxEventsRequest, request, deadline, |frame| {
            expect_type(&frame, MessageType::SandboxEvent.code())?;
            Ok(on_event(pb::SandboxEvent::decode(frame.payload).map_err(ClientError::Decode)?))
        })
        .await
    }

    /// Snapshots a running sandbox.
    pub async fn sandbox_checkpoint(
        &mut self,
        request: &pb::CheckpointRequest,
        deadline: Duration,
    ) -> Result<pb::CheckpointResponse, ClientError> {
        self.call_with_deadline(MessageType::SandboxCheckpointRequest, request, deadline).await
    }

    /// Makes a new sandbox from a snapshot.
    pub async fn sandbox_restore(
        &mut self,
        request: &pb::RestoreRequest,
        deadline: Duration,
    ) -> Result<pb::RestoreResponse, ClientError> {
        self.call_with_deadline(MessageType::SandboxRestoreRequest, request, deadline).await
    }

    /// Snapshots of `sandbox_id` ("" any) with all of `labels`.
    pub async fn sandbox_snapshots(
        &mut self,
        sandbox_id: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<pb::SnapshotSummary>, ClientError> {
        let request = pb::ListSnapshotsRequest { sandbox_id: sandbox_id.to_owned(), labels };
        let response: pb::ListSnapshotsResponse =
            self.call(MessageType::SandboxListSnapshotsRequest, &request).await?;
        Ok(response.snapshots)
    }

    /// Deletes a snapshot.
    pub async fn sandbox_delete_snapshot(&mut self, snapshot_id: &str) -> Result<(), ClientError> {
        let request = pb::DeleteSnapshotRequest { snapshot_id: snapshot_id.to_owned() };
        self.call(MessageType::SandboxDeleteSnapshotRequest, &request).await
    }
}

/// An Exec in a sandbox: output items in, stdin and resizes out.
pub struct SandboxExec<S> {
    output: SandboxExecOutput<S>,
    input: SandboxExecInput<S>,
}

/// The output side of a [`SandboxExec`].
pub struct SandboxExecOutput<S> {
    reader: SessionReader<S>,
}

/// The input side of a [`SandboxExec`].
pub struct SandboxExecInput<S> {
    writer: SessionWriter<S>,
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite> SandboxExec<S> {
    fn new(session: ClientSession<S>) -> Self {
        let (reader, writer) = session.split();
        Self { output: SandboxExecOutput { reader }, input: SandboxExecInput { writer, closed: false } }
    }

    /// The two directions, to use from separate tasks.
    pub fn split(self) -> (SandboxExecOutput<S>, SandboxExecInput<S>) {
        (self.output, self.input)
    }
}

impl<S: AsyncRead> SandboxExecOutput<S> {
    /// The next output item; `None` once the session ended (after the
    /// item with `done`).
    pub async fn next(&mut self) -> Result<Option<SandboxOutput>, ClientError> {
        let Some(frame) = self.reader.next().await? else { return Ok(None) };
        expect_type(&frame, MessageType::SandboxExecOutput.code())?;
        Ok(Some(pb::ExecOutput::decode(frame.payload).map_err(ClientError::Decode)?.into()))
    }
}

impl<S: AsyncWrite> SandboxExecInput<S> {
    /// Sends stdin bytes (nothing for an empty slice: empty means EOF).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if data.is_empty() || self.closed {
            return Ok(());
        }
        self.writer.send_raw(MessageType::SandboxExecInput.code(), data).await
    }

    /// Ends stdin (an empty input frame).
    pub async fn close(&mut self) -> Result<(), ClientError> {
        if !self.closed {
            self.closed = true;
            self.writer.send_raw(MessageType::SandboxExecInput.code(), &[]).await?;
        }
        Ok(())
    }

    /// Resizes the terminal (the extension frame 0x0118).
    pub async fn resize(&mut self, width: u32, height: u32) -> Result<(), ClientError> {
        self.writer.send(MessageType::SandboxExecResize.code(), &pb::TerminalSize { width, height }).await
    }
}
