//! The golden byte blocks of docs/PROTOCOL.md are what the code encodes
//! and decodes: the document is the contract.

use arcbox_agent_core::authz::Authz;
use arcbox_agent_core::config::AuthConfig;
use arcbox_agent_core::protocol::proto::agent::{
    AgentPingRequest, AgentPingResponse, ExecOutput, ExecRunRequest, ExecStartRequest, FileReadRequest,
    FsFreezeRequest, SyncClockRequest,
};
use arcbox_agent_core::protocol::{ErrorCode, ErrorPayload, MessageType, encode_parts, try_decode};
use bytes::BytesMut;
use prost::Message as _;

/// Every ```golden NAME block of the protocol document, as bytes.
fn goldens() -> Vec<(String, Vec<u8>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```golden ") else { continue };
        let mut bytes = Vec::new();
        for body in lines.by_ref().take_while(|l| !l.starts_with("```")) {
            for hex in body.split_whitespace() {
                bytes.push(u8::from_str_radix(hex, 16).unwrap());
            }
        }
        out.push((name.trim().to_owned(), bytes));
    }
    out
}

fn golden(name: &str) -> Vec<u8> {
    goldens().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no golden {name}")).1
}

fn encode(msg_type: MessageType, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_parts(msg_type.code(), b"t1", payload, &mut out).unwrap();
    out.to_vec()
}

#[test]
fn the_document_has_the_golden_blocks() {
    let names: Vec<String> = goldens().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "ping_request",
            "ping_response",
            "error_400_bad",
            "error_403_denied",
            "file_read_request",
            "exec_run_request",
            "exec_output_item",
            "copy_in_request",
            "copy_input_chunk",
            "watch_stats_request",
            "fs_freeze_request",
            "sync_clock_request",
            "sandbox_create_request",
            "sandbox_stop_response",
            "sandbox_run_output_item",
            "sandbox_run_exit_item",
            "sandbox_exec_input",
            "sandbox_exec_eof",
            "sandbox_exec_resize",
            "sandbox_event_item",
            "sandbox_checkpoint_request"
        ]
    );
}

#[test]
fn exec_goldens_match() {
    let start = ExecStartRequest { argv: vec!["true".into()], ..Default::default() };
    let run = ExecRunRequest { start: Some(start), window_bytes: 0 };
    assert_eq!(encode(MessageType::ExecRunRequest, &run.encode_to_vec()), golden("exec_run_request"));
    let item = ExecOutput { stream: 1, offset: 0, data: b"hi".to_vec() };
    assert_eq!(encode(MessageType::ExecOutput, &item.encode_to_vec()), golden("exec_output_item"));
}

#[test]
fn sandbox_goldens_match() {
    use arcbox_agent_core::protocol::proto::sandbox::v1 as pb;
    let create = pb::CreateSandboxRequest {
        id: "b".into(),
        rootfs: "/r".into(),
        network: Some(pb::NetworkSpec { mode: "tap".into() }),
        ..Default::default()
    };
    assert_eq!(
        encode(MessageType::SandboxCreateRequest, &create.encode_to_vec()),
        golden("sandbox_create_request")
    );
    assert_eq!(encode(MessageType::SandboxStopResponse, &[]), golden("sandbox_stop_response"));
    let item = pb::RunOutput { stream: "stdout".into(), data: b"hi".to_vec(), ..Default::default() };
    assert_eq!(
        encode(MessageType::SandboxRunOutput, &item.encode_to_vec()),
        golden("sandbox_run_output_item")
    );
    let exit = pb::RunOutput { stream: "exit".into(), done: true, ..Default::default() };
    assert_eq!(encode(MessageType::SandboxRunOutput, &exit.encode_to_vec()), golden("sandbox_run_exit_item"));
    assert_eq!(encode(MessageType::SandboxExecInput, b"hi"), golden("sandbox_exec_input"));
    assert_eq!(encode(MessageType::SandboxExecInput, b""), golden("sandbox_exec_eof"));
    let resize = pb::TerminalSize { width: 120, height: 40 };
    assert_eq!(
        encode(MessageType::SandboxExecResize, &resize.encode_to_vec()),
        golden("sandbox_exec_resize")
    );
    let event = pb::SandboxEvent {
        sandbox_id: "b".into(),
        action: "ready".into(),
        timestamp: 1,
        ..Default::default()
    };
    assert_eq!(encode(MessageType::SandboxEvent, &event.encode_to_vec()), golden("sandbox_event_item"));
    let checkpoint =
        pb::CheckpointRequest { sandbox_id: "b".into(), name: "v1".into(), ..Default::default() };
    assert_eq!(
        encode(MessageType::SandboxCheckpointRequest, &checkpoint.encode_to_vec()),
        golden("sandbox_checkpoint_request")
    );
}

#[test]
fn copy_goldens_match() {
    use arcbox_agent_wire::protocol::proto::agent::{CopyChunk, CopyInRequest};
    let request =
        CopyInRequest { root: "/r".into(), path: "d".into(), follow_symlink: true, ..Default::default() };
    assert_eq!(encode(MessageType::CopyInRequest, &request.encode_to_vec()), golden("copy_in_request"));
    let chunk = CopyChunk { data: b"hi".to_vec(), ..Default::default() };
    assert_eq!(encode(MessageType::CopyInput, &chunk.encode_to_vec()), golden("copy_input_chunk"));
}

#[test]
fn file_read_request_golden_matches() {
    let request = FileReadRequest { root: "/r".into(), path: "a".into(), offset: 1, length: 2 };
    assert_eq!(encode(MessageType::FileReadRequest, &request.encode_to_vec()), golden("file_read_request"));
}

#[test]
fn watch_stats_request_golden_matches() {
    use arcbox_agent_wire::protocol::proto::agent::WatchStatsRequest;
    let request = WatchStatsRequest { interval_ms: 500, per_cpu: true, count: 3 };
    assert_eq!(
        encode(MessageType::WatchStatsRequest, &request.encode_to_vec()),
        golden("watch_stats_request")
    );
}

#[test]
fn ping_request_golden_matches() {
    let payload = AgentPingRequest { message: "hi".into(), ..Default::default() }.encode_to_vec();
    assert_eq!(encode(MessageType::PingRequest, &payload), golden("ping_request"));
}

#[test]
fn ping_response_golden_matches() {
    let payload = AgentPingResponse { message: "pong".into(), version: "0.1.0".into(), ..Default::default() };
    assert_eq!(encode(MessageType::PingResponse, &payload.encode_to_vec()), golden("ping_response"));
}

#[test]
fn error_golden_matches_and_decodes() {
    let payload = ErrorPayload::new(400, "bad").to_bytes();
    assert_eq!(encode(MessageType::Error, &payload), golden("error_400_bad"));
    let mut buf = BytesMut::from(&golden("error_400_bad")[..]);
    let frame = try_decode(&mut buf, 1 << 20).unwrap().unwrap();
    assert_eq!(ErrorPayload::decode(&frame.payload).unwrap(), ErrorPayload::new(400, "bad"));
}

#[test]
fn the_403_golden_is_what_the_agents_policy_answers() {
    let auth = AuthConfig { exec: false, ..AuthConfig::default() };
    let denied =
        Authz::from_config(&auth).0.check_request(MessageType::ExecListRequest.code(), "t").unwrap_err();
    let payload = ErrorPayload::new(ErrorCode::FORBIDDEN, denied.to_string()).to_bytes();
    assert_eq!(encode(MessageType::Error, &payload), golden("error_403_denied"));
}

#[test]
fn extension_fields_are_invisible_to_a_reference_decoder() {
    // A reference host's AgentPingResponse knows fields 1 and 2 only: the
    // extension fields (100+) must be skippable unknown fields.
    #[derive(Clone, PartialEq, prost::Message)]
    struct ReferencePingResponse {
        #[prost(string, tag = "1")]
        message: String,
        #[prost(string, tag = "2")]
        version: String,
    }
    let ours = AgentPingResponse {
        message: "pong".into(),
        version: "0.1.0".into(),
        protocol_version: 1,
        capabilities: vec![1, 2, 3],
        boot_id: "b".into(),
        clock: "unchanged".into(),
    };
    let theirs = ReferencePingResponse::decode(&ours.encode_to_vec()[..]).unwrap();
    assert_eq!((theirs.message.as_str(), theirs.version.as_str()), ("pong", "0.1.0"));
}

#[test]
fn fs_freeze_request_golden_matches() {
    let request = FsFreezeRequest { timeout_secs: 10, pause_runtime: true };
    assert_eq!(encode(MessageType::FsFreezeRequest, &request.encode_to_vec()), golden("fs_freeze_request"));
}

#[test]
fn sync_clock_request_golden_matches() {
    let request =
        SyncClockRequest { host_unix_nanos: 1_700_000_000_000_000_000, woke: true, ..Default::default() };
    assert_eq!(encode(MessageType::SyncClockRequest, &request.encode_to_vec()), golden("sync_clock_request"));
    let decoded = SyncClockRequest::decode(&golden("sync_clock_request")[12..]).unwrap();
    assert_eq!(decoded, request);
}
