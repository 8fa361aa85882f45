//! Authorization in the real guest over real vsock: the `[auth]` allow
//! list of the config file is replaced by the kernel command line's, a
//! denied request is answered 403 on a connection that goes on, and the
//! Docker API proxy switched off leaves guest port 2375 refused while the
//! Kubernetes one still listens.

use std::time::Duration;

use arcbox_agent_core::protocol::proto::agent::{FileListRequest, FileStatRequest};
use arcbox_agent_core::protocol::{ErrorCode, MessageType};
use arcbox_agent_wire::client::{AgentClient, ClientError};
use tokio::io::AsyncWriteExt as _;

use super::vm::{ERROR_MSG_TYPE, RPC_PORT, Vm, VmOptions, decode_error, encode_frame, read_frame};

/// The config file at the default path: allows exec and the Docker proxy,
/// which the command line's list does not, and denies FileStat, which the
/// command line does not mention (so it shows the file was read).
const CONFIG_FILE: &str =
    "[auth]\nallow = [\"status\", \"exec\", \"docker-proxy\", \"kubernetes-proxy\"]\ndeny = [\"FileStat\"]\n";

/// The boot: the config file in the image, the lists on the command line.
pub fn options() -> VmOptions {
    VmOptions::default()
        .file("/etc/arcbox/agent.toml", CONFIG_FILE)
        .cmdline("arcbox_agent.allow=status,stats,files.read,kubernetes-proxy")
        .cmdline("arcbox_agent.docker_proxy=0")
}

const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Every authorization check on the boot of [`options`].
pub async fn the_command_line_policy_is_enforced_in_the_guest(vm: &Vm, agent: &mut AgentClient) {
    a_denied_request_is_403_and_the_connection_goes_on(vm).await;

    // Allowed by the command line only.
    agent.stats(false).await.expect("stats: allowed by the command line");
    let list = FileListRequest { root: "/".into(), path: "/etc/arcbox".into(), max_entries: 0 };
    let listing = agent.file_list(list).await.expect("files.read: allowed by the command line");
    assert!(listing.entries.iter().any(|e| e.name == "agent.toml"), "the config file is in the image");
    // Denied by the file's deny list, which the command line left alone.
    let stat = agent.file_stat(FileStatRequest { root: "/".into(), path: "/etc".into() }).await;
    assert_eq!(stat.as_ref().err().and_then(ClientError::code), Some(ErrorCode::FORBIDDEN), "{stat:?}");

    // The Docker proxy is off: nothing listens on 2375. The Kubernetes proxy is on.
    let docker = vm.connect_raw(2375).await;
    assert!(docker.is_err(), "guest port 2375 accepted a connection with the Docker proxy off");
    let refused = docker.err().map(|e| e.to_string()).unwrap_or_default();
    eprintln!("vsock 2375 with the proxy off: {refused}");
    vm.connect_raw(16443).await.expect("the Kubernetes proxy still listens on 16443");

    let info = agent.system_info().await.expect("system info is always allowed");
    let denied: Vec<(&str, u64)> = info.agent_denied.iter().map(|d| (d.request.as_str(), d.count)).collect();
    assert_eq!(denied, [("FileStatRequest", 1), ("ExecListRequest", 1)], "{info:?}");
    assert_eq!((info.agent_requests_denied, info.agent_peers_refused), (2, 0));
}

/// ExecList, allowed by the file but not by the command line, is answered
/// 403 naming it; a Ping on the same connection is answered after it.
async fn a_denied_request_is_403_and_the_connection_goes_on(vm: &Vm) {
    let mut stream = vm.connect_raw(RPC_PORT).await.expect("connect");
    stream.write_all(&encode_frame(MessageType::ExecListRequest.code(), b"denied", &[])).await.unwrap();
    let answer = read_frame(&mut stream, READ_TIMEOUT).await.expect("an answer to ExecList");
    assert_eq!((answer.msg_type, answer.trace_id.as_slice()), (ERROR_MSG_TYPE, &b"denied"[..]), "{answer:?}");
    let (code, message) = decode_error(&answer.payload).expect("error payload");
    assert_eq!(code, ErrorCode::FORBIDDEN);
    assert_eq!(message, "ExecListRequest(0x0115) is not allowed by this agent's policy");
    stream.write_all(&encode_frame(MessageType::PingRequest.code(), b"after", &[])).await.unwrap();
    let pong = read_frame(&mut stream, READ_TIMEOUT).await.expect("a Ping answered on the same connection");
    assert_eq!((pong.msg_type, pong.trace_id.as_slice()), (MessageType::PingResponse.code(), &b"after"[..]));
}
