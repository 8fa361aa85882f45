//! Message type codes: every code of the reference's `MessageType` table,
//! plus arcbox-agent extensions in the range `0x0100..=0x0FFF` (responses
//! `0x1100..=0x1FFF`), which the reference never uses.

/// Responses carry the request code with this bit set.
pub const RESPONSE_BIT: u32 = 0x1000;
/// First request code reserved for arcbox-agent extensions.
pub const EXTENSION_FIRST: u32 = 0x0100;
/// Last request code reserved for arcbox-agent extensions.
pub const EXTENSION_LAST: u32 = 0x0FFF;

macro_rules! message_types {
    ($( $(#[$doc:meta])* $name:ident = $code:literal ),+ $(,)?) => {
        /// A known message type code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum MessageType {
            $( $(#[$doc])* $name = $code ),+
        }

        impl MessageType {
            /// Every known code, in table order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name),+];

            /// Looks a raw code up; `None` for codes this build does not know.
            pub const fn from_u32(code: u32) -> Option<Self> {
                match code {
                    $( $code => Some(MessageType::$name), )+
                    _ => None,
                }
            }

            /// The name used in docs, logs and error messages.
            pub const fn name(self) -> &'static str {
                match self {
                    $( MessageType::$name => stringify!($name), )+
                }
            }
        }
    };
}

message_types! {
    /// Empty payload; the host also accepts it as an empty response.
    Empty = 0x0000,
    /// `AgentPingRequest`.
    PingRequest = 0x0001,
    /// Empty payload.
    GetSystemInfoRequest = 0x0002,
    /// `RuntimeEnsureRequest`.
    EnsureRuntimeRequest = 0x0003,
    /// `RuntimeStatusRequest`.
    RuntimeStatusRequest = 0x0004,
    /// `KubernetesStartRequest`.
    KubernetesStartRequest = 0x0005,
    /// `KubernetesStopRequest`.
    KubernetesStopRequest = 0x0006,
    /// `KubernetesDeleteRequest`.
    KubernetesDeleteRequest = 0x0007,
    /// `KubernetesStatusRequest`.
    KubernetesStatusRequest = 0x0008,
    /// `KubernetesKubeconfigRequest`.
    KubernetesKubeconfigRequest = 0x0009,
    /// `ShutdownRequest`.
    ShutdownRequest = 0x000A,
    /// `MmapReadFileRequest` (test only in the reference).
    MmapReadFileRequest = 0x000B,
    /// `sandbox.v1.CreateSandboxRequest`.
    SandboxCreateRequest = 0x0020,
    /// `sandbox.v1.StopSandboxRequest`.
    SandboxStopRequest = 0x0021,
    /// `sandbox.v1.RemoveSandboxRequest`.
    SandboxRemoveRequest = 0x0022,
    /// `sandbox.v1.InspectSandboxRequest`.
    SandboxInspectRequest = 0x0023,
    /// `sandbox.v1.ListSandboxesRequest`.
    SandboxListRequest = 0x0024,
    /// `sandbox.v1.RunRequest`; answered by a stream of `SandboxRunOutput`.
    SandboxRunRequest = 0x0030,
    /// `sandbox.v1.ExecRequest`; answered by a stream of `SandboxExecOutput`.
    SandboxExecRequest = 0x0031,
    /// `sandbox.v1.SandboxEventsRequest`; answered by a stream of `SandboxEvent`.
    SandboxEventsRequest = 0x0032,
    /// Raw stdin bytes for a running exec; an empty payload means EOF.
    SandboxExecInput = 0x0033,
    /// `sandbox.v1.CheckpointRequest`.
    SandboxCheckpointRequest = 0x0040,
    /// `sandbox.v1.RestoreRequest`.
    SandboxRestoreRequest = 0x0041,
    /// `sandbox.v1.ListSnapshotsRequest`.
    SandboxListSnapshotsRequest = 0x0042,
    /// `sandbox.v1.DeleteSnapshotRequest`.
    SandboxDeleteSnapshotRequest = 0x0043,
    /// Extension: `BootReportRequest`.
    BootReportRequest = 0x0100,
    /// Extension (reserved): readiness event stream.
    WatchReadinessRequest = 0x0101,
    /// Extension: `DnsListRequest` (the guest DNS server's names and upstreams).
    DnsListRequest = 0x0102,
    /// Extension: `DnsSetUpstreamsRequest`.
    DnsSetUpstreamsRequest = 0x0103,
    /// Extension: `FileReadRequest` (confined to a root directory, as every file request).
    FileReadRequest = 0x0104,
    /// Extension: `FileWriteRequest` (atomic replace).
    FileWriteRequest = 0x0105,
    /// Extension: `FileStatRequest`.
    FileStatRequest = 0x0106,
    /// Extension: `FileListRequest`.
    FileListRequest = 0x0107,
    /// Extension: `FileMkdirRequest`.
    FileMkdirRequest = 0x0108,
    /// Extension: `FileRemoveRequest`.
    FileRemoveRequest = 0x0109,
    /// Extension: `ExecStartRequest`.
    ExecStartRequest = 0x0110,
    /// Extension: `ExecAttachRequest` (a session: output streamed, stdin read).
    ExecAttachRequest = 0x0111,
    /// Extension: `ExecWaitRequest`.
    ExecWaitRequest = 0x0112,
    /// Extension: `ExecSignalRequest`.
    ExecSignalRequest = 0x0113,
    /// Extension: `ExecResizeRequest`.
    ExecResizeRequest = 0x0114,
    /// Extension: `ExecListRequest`.
    ExecListRequest = 0x0115,
    /// Extension: `ExecRunRequest` (start and attach in one session).
    ExecRunRequest = 0x0116,
    /// Extension: `ExecInput`, host to agent inside an exec session (not a request).
    ExecInput = 0x0117,
    /// Extension: `sandbox.v1.TerminalSize`, host to agent inside a
    /// SandboxExec session: resizes its terminal (not a request).
    SandboxExecResize = 0x0118,
    /// Extension: `CopyInRequest`, a tar archive into the guest (a session).
    CopyInRequest = 0x0120,
    /// Extension: `CopyOutRequest`, a tar archive out of the guest (a session).
    CopyOutRequest = 0x0121,
    /// Extension: `CopyChunk`, host to agent inside a copy session (not a request).
    CopyInput = 0x0122,
    /// Extension: `StatsRequest` (one sample of the guest's counters).
    StatsRequest = 0x0130,
    /// Extension: `WatchStatsRequest`; answered by a stream of `StatsSample`.
    WatchStatsRequest = 0x0131,
    /// Extension: `FsFreezeRequest` (FIFREEZE every writable disk filesystem; answers a thaw token).
    FsFreezeRequest = 0x0140,
    /// Extension: `FsThawRequest` (with the freeze's token).
    FsThawRequest = 0x0141,
    /// Extension: `FsFreezeStatusRequest`.
    FsFreezeStatusRequest = 0x0142,
    /// Extension: `SyncClockRequest` (step or slew the guest clock to the host's, or ptp_kvm's).
    SyncClockRequest = 0x0143,
    /// `AgentPingResponse`.
    PingResponse = 0x1001,
    /// `SystemInfo`.
    GetSystemInfoResponse = 0x1002,
    /// `RuntimeEnsureResponse`.
    EnsureRuntimeResponse = 0x1003,
    /// `RuntimeStatusResponse`.
    RuntimeStatusResponse = 0x1004,
    /// `KubernetesStartResponse`.
    KubernetesStartResponse = 0x1005,
    /// `KubernetesStopResponse`.
    KubernetesStopResponse = 0x1006,
    /// `KubernetesDeleteResponse`.
    KubernetesDeleteResponse = 0x1007,
    /// `KubernetesStatusResponse`.
    KubernetesStatusResponse = 0x1008,
    /// `KubernetesKubeconfigResponse`.
    KubernetesKubeconfigResponse = 0x1009,
    /// `ShutdownResponse`.
    ShutdownResponse = 0x100A,
    /// `MmapReadFileResponse`.
    MmapReadFileResponse = 0x100B,
    /// `sandbox.v1.CreateSandboxResponse`.
    SandboxCreateResponse = 0x1020,
    /// Empty payload.
    SandboxStopResponse = 0x1021,
    /// Empty payload.
    SandboxRemoveResponse = 0x1022,
    /// `sandbox.v1.SandboxInfo`.
    SandboxInspectResponse = 0x1023,
    /// `sandbox.v1.ListSandboxesResponse`.
    SandboxListResponse = 0x1024,
    /// `PortBindingsChanged` (host to guest; unused by the reference).
    PortBindingsChanged = 0x1030,
    /// `PortBindingsRemoved` (host to guest; unused by the reference).
    PortBindingsRemoved = 0x1031,
    /// `sandbox.v1.RunOutput` stream item.
    SandboxRunOutput = 0x1035,
    /// `sandbox.v1.ExecOutput` stream item.
    SandboxExecOutput = 0x1036,
    /// `sandbox.v1.SandboxEvent` stream item.
    SandboxEvent = 0x1037,
    /// `sandbox.v1.CheckpointResponse`.
    SandboxCheckpointResponse = 0x1040,
    /// `sandbox.v1.RestoreResponse`.
    SandboxRestoreResponse = 0x1041,
    /// `sandbox.v1.ListSnapshotsResponse`.
    SandboxListSnapshotsResponse = 0x1042,
    /// Empty payload.
    SandboxDeleteSnapshotResponse = 0x1043,
    /// Extension: `BootReport`.
    BootReportResponse = 0x1100,
    /// Extension (reserved): readiness event.
    ReadinessEvent = 0x1101,
    /// Extension: `DnsListResponse`.
    DnsListResponse = 0x1102,
    /// Extension: `DnsSetUpstreamsResponse`.
    DnsSetUpstreamsResponse = 0x1103,
    /// Extension: `FileReadResponse`.
    FileReadResponse = 0x1104,
    /// Extension: `FileWriteResponse`.
    FileWriteResponse = 0x1105,
    /// Extension: `FileStatResponse`.
    FileStatResponse = 0x1106,
    /// Extension: `FileListResponse`.
    FileListResponse = 0x1107,
    /// Extension: `FileMkdirResponse`.
    FileMkdirResponse = 0x1108,
    /// Extension: `FileRemoveResponse`.
    FileRemoveResponse = 0x1109,
    /// Extension: `ExecStartResponse`.
    ExecStartResponse = 0x1110,
    /// Extension: `ExecOutput` stream item of an exec session.
    ExecOutput = 0x1111,
    /// Extension: `ExecStatus`, the answer to a wait.
    ExecWaitResponse = 0x1112,
    /// Extension: `ExecSignalResponse`.
    ExecSignalResponse = 0x1113,
    /// Extension: `ExecResizeResponse`.
    ExecResizeResponse = 0x1114,
    /// Extension: `ExecListResponse`.
    ExecListResponse = 0x1115,
    /// Extension: `ExecStartResponse`, first frame of an `ExecRunRequest` session.
    ExecStarted = 0x1116,
    /// Extension: `ExecGap` stream item of an exec session.
    ExecGap = 0x1118,
    /// Extension: `ExecStatus`, the last frame of an exec session.
    ExecExit = 0x1119,
    /// Extension: `ExecInputAck`, stdin credit inside an exec session.
    ExecInputAck = 0x111A,
    /// Extension: `CopyResult`, the last frame of a copy session.
    CopyResult = 0x1120,
    /// Extension: `CopyChunk`, archive bytes of a copy-out.
    CopyOutput = 0x1121,
    /// Extension: `CopyAck`, archive credit inside a copy-in.
    CopyAck = 0x1122,
    /// Extension: `StatsSample` answering a `StatsRequest`.
    StatsResponse = 0x1130,
    /// Extension: `StatsSample`, one stream item of a `WatchStatsRequest`.
    StatsSample = 0x1131,
    /// Extension: `FsFreezeResponse`.
    FsFreezeResponse = 0x1140,
    /// Extension: `FsThawResponse`.
    FsThawResponse = 0x1141,
    /// Extension: `FsFreezeStatusResponse`.
    FsFreezeStatusResponse = 0x1142,
    /// Extension: `SyncClockResponse`.
    SyncClockResponse = 0x1143,
    /// Error frame with the binary payload of [`crate::protocol::ErrorPayload`].
    Error = 0xFFFF,
}

impl MessageType {
    /// The raw code.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Whether the host sends this type to start an exchange.
    pub const fn is_request(self) -> bool {
        let code = self.code();
        code != 0
            && code < RESPONSE_BIT
            && !matches!(
                self,
                MessageType::SandboxExecInput
                    | MessageType::SandboxExecResize
                    | MessageType::ExecInput
                    | MessageType::CopyInput
            )
    }

    /// Whether the code lies in the arcbox-agent extension range.
    pub const fn is_extension(code: u32) -> bool {
        (code >= EXTENSION_FIRST && code <= EXTENSION_LAST)
            || (code >= EXTENSION_FIRST | RESPONSE_BIT && code <= EXTENSION_LAST | RESPONSE_BIT)
    }
}

/// The response code for a unary request code.
pub const fn response_code(request: u32) -> u32 {
    request | RESPONSE_BIT
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(0x{:04X})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_from_u32() {
        for &t in MessageType::ALL {
            assert_eq!(MessageType::from_u32(t.code()), Some(t));
        }
    }

    #[test]
    fn unary_responses_are_the_request_code_with_the_response_bit() {
        assert_eq!(response_code(MessageType::PingRequest.code()), MessageType::PingResponse.code());
        assert_eq!(response_code(0x000A), MessageType::ShutdownResponse.code());
        assert_eq!(
            response_code(MessageType::BootReportRequest.code()),
            MessageType::BootReportResponse.code()
        );
    }

    /// The reference's own table: none of it may fall in our range, and
    /// every other known code must.
    const REFERENCE: &[MessageType] = &[
        MessageType::Empty,
        MessageType::PingRequest,
        MessageType::GetSystemInfoRequest,
        MessageType::EnsureRuntimeRequest,
        MessageType::RuntimeStatusRequest,
        MessageType::KubernetesStartRequest,
        MessageType::KubernetesStopRequest,
        MessageType::KubernetesDeleteRequest,
        MessageType::KubernetesStatusRequest,
        MessageType::KubernetesKubeconfigRequest,
        MessageType::ShutdownRequest,
        MessageType::MmapReadFileRequest,
        MessageType::SandboxCreateRequest,
        MessageType::SandboxStopRequest,
        MessageType::SandboxRemoveRequest,
        MessageType::SandboxInspectRequest,
        MessageType::SandboxListRequest,
        MessageType::SandboxRunRequest,
        MessageType::SandboxExecRequest,
        MessageType::SandboxEventsRequest,
        MessageType::SandboxExecInput,
        MessageType::SandboxCheckpointRequest,
        MessageType::SandboxRestoreRequest,
        MessageType::SandboxListSnapshotsRequest,
        MessageType::SandboxDeleteSnapshotRequest,
        MessageType::PingResponse,
        MessageType::GetSystemInfoResponse,
        MessageType::EnsureRuntimeResponse,
        MessageType::RuntimeStatusResponse,
        MessageType::KubernetesStartResponse,
        MessageType::KubernetesStopResponse,
        MessageType::KubernetesDeleteResponse,
        MessageType::KubernetesStatusResponse,
        MessageType::KubernetesKubeconfigResponse,
        MessageType::ShutdownResponse,
        MessageType::MmapReadFileResponse,
        MessageType::SandboxCreateResponse,
        MessageType::SandboxStopResponse,
        MessageType::SandboxRemoveResponse,
        MessageType::SandboxInspectResponse,
        MessageType::SandboxListResponse,
        MessageType::PortBindingsChanged,
        MessageType::PortBindingsRemoved,
        MessageType::SandboxRunOutput,
        MessageType::SandboxExecOutput,
        MessageType::SandboxEvent,
        MessageType::SandboxCheckpointResponse,
        MessageType::SandboxRestoreResponse,
        MessageType::SandboxListSnapshotsResponse,
        MessageType::SandboxDeleteSnapshotResponse,
        MessageType::Error,
    ];

    #[test]
    fn reference_codes_stay_outside_the_extension_range() {
        for &t in MessageType::ALL {
            let ours = !REFERENCE.contains(&t);
            assert_eq!(MessageType::is_extension(t.code()), ours, "{t}");
        }
    }

    #[test]
    fn exec_input_and_responses_are_not_requests() {
        assert!(!MessageType::SandboxExecInput.is_request());
        assert!(!MessageType::PingResponse.is_request());
        assert!(!MessageType::Error.is_request());
        assert!(MessageType::SandboxRunRequest.is_request());
    }
}
