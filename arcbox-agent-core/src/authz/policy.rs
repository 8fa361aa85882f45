//! The request policy: which request types and services a host may use,
//! compiled once from `[auth]` (allow list, deny list, switches) into sets
//! of codes, so a check per request is two hash lookups.
//!
//! Names in the lists are request names as [`MessageType`] spells them
//! (`ExecStartRequest`, or `ExecStart`), raw codes (`0x0F01`, for an
//! embedder's requests), group names ([`Group`]) and the services
//! (`docker-proxy`, `kubernetes-proxy`).

use std::collections::HashSet;

use crate::config::{AuthConfig, ConfigError};
use crate::protocol::{MessageType, RESPONSE_BIT};

/// Requests answered whatever the lists say: a host can always tell the
/// agent is alive and read its counters (denials included), and a guest is
/// never left frozen because the thaw was not listed (qemu-ga likewise
/// always allows guest-ping and guest-sync).
pub const ALWAYS_ALLOWED: [MessageType; 3] =
    [MessageType::PingRequest, MessageType::GetSystemInfoRequest, MessageType::FsThawRequest];

/// A family of requests, named in allow and deny lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// Ping, GetSystemInfo, BootReport, WatchReadiness.
    Status,
    /// EnsureRuntime, RuntimeStatus.
    Runtime,
    /// The Kubernetes requests (k3s start, stop, delete, status, kubeconfig).
    Kubernetes,
    /// Shutdown.
    Shutdown,
    /// FileRead, FileStat, FileList, MmapReadFile.
    FilesRead,
    /// FileWrite, FileMkdir, FileRemove.
    FilesWrite,
    /// Every exec request, and the reference's SandboxRun and SandboxExec.
    Exec,
    /// The reference's other sandbox requests.
    Sandbox,
    /// Stats, WatchStats.
    Stats,
    /// FsFreeze, FsThaw, FsFreezeStatus.
    Freeze,
    /// SyncClock.
    Clock,
    /// DnsList, DnsSetUpstreams.
    Dns,
}

impl Group {
    /// Every group.
    pub const ALL: [Group; 12] = [
        Group::Status,
        Group::Runtime,
        Group::Kubernetes,
        Group::Shutdown,
        Group::FilesRead,
        Group::FilesWrite,
        Group::Exec,
        Group::Sandbox,
        Group::Stats,
        Group::Freeze,
        Group::Clock,
        Group::Dns,
    ];

    /// The name used in allow and deny lists.
    pub const fn name(self) -> &'static str {
        match self {
            Group::Status => "status",
            Group::Runtime => "runtime",
            Group::Kubernetes => "kubernetes",
            Group::Shutdown => "shutdown",
            Group::FilesRead => "files.read",
            Group::FilesWrite => "files.write",
            Group::Exec => "exec",
            Group::Sandbox => "sandbox",
            Group::Stats => "stats",
            Group::Freeze => "freeze",
            Group::Clock => "clock",
            Group::Dns => "dns",
        }
    }

    /// The group of a request type; `None` for types a host never starts
    /// an exchange with. No wildcard arm: a new type must be placed here.
    pub const fn of(t: MessageType) -> Option<Group> {
        use MessageType as M;
        match t {
            M::PingRequest | M::GetSystemInfoRequest | M::BootReportRequest | M::WatchReadinessRequest => {
                Some(Group::Status)
            }
            M::EnsureRuntimeRequest | M::RuntimeStatusRequest => Some(Group::Runtime),
            M::KubernetesStartRequest
            | M::KubernetesStopRequest
            | M::KubernetesDeleteRequest
            | M::KubernetesStatusRequest
            | M::KubernetesKubeconfigRequest => Some(Group::Kubernetes),
            M::ShutdownRequest => Some(Group::Shutdown),
            M::MmapReadFileRequest
            | M::FileReadRequest
            | M::FileStatRequest
            | M::FileListRequest
            | M::CopyOutRequest => Some(Group::FilesRead),
            M::FileWriteRequest | M::FileMkdirRequest | M::FileRemoveRequest | M::CopyInRequest => {
                Some(Group::FilesWrite)
            }
            M::ExecStartRequest
            | M::ExecAttachRequest
            | M::ExecWaitRequest
            | M::ExecSignalRequest
            | M::ExecResizeRequest
            | M::ExecListRequest
            | M::ExecRunRequest
            | M::SandboxRunRequest
            | M::SandboxExecRequest => Some(Group::Exec),
            M::SandboxCreateRequest
            | M::SandboxStopRequest
            | M::SandboxRemoveRequest
            | M::SandboxInspectRequest
            | M::SandboxListRequest
            | M::SandboxEventsRequest
            | M::SandboxCheckpointRequest
            | M::SandboxRestoreRequest
            | M::SandboxListSnapshotsRequest
            | M::SandboxDeleteSnapshotRequest => Some(Group::Sandbox),
            M::StatsRequest | M::WatchStatsRequest => Some(Group::Stats),
            M::FsFreezeRequest | M::FsThawRequest | M::FsFreezeStatusRequest => Some(Group::Freeze),
            M::SyncClockRequest => Some(Group::Clock),
            M::DnsListRequest | M::DnsSetUpstreamsRequest => Some(Group::Dns),
            M::Empty
            | M::SandboxExecInput
            | M::SandboxExecResize
            | M::ExecInput
            | M::CopyInput
            | M::PingResponse
            | M::GetSystemInfoResponse
            | M::EnsureRuntimeResponse
            | M::RuntimeStatusResponse
            | M::KubernetesStartResponse
            | M::KubernetesStopResponse
            | M::KubernetesDeleteResponse
            | M::KubernetesStatusResponse
            | M::KubernetesKubeconfigResponse
            | M::ShutdownResponse
            | M::MmapReadFileResponse
            | M::SandboxCreateResponse
            | M::SandboxStopResponse
            | M::SandboxRemoveResponse
            | M::SandboxInspectResponse
            | M::SandboxListResponse
            | M::PortBindingsChanged
            | M::PortBindingsRemoved
            | M::SandboxRunOutput
            | M::SandboxExecOutput
            | M::SandboxEvent
            | M::SandboxCheckpointResponse
            | M::SandboxRestoreResponse
            | M::SandboxListSnapshotsResponse
            | M::SandboxDeleteSnapshotResponse
            | M::BootReportResponse
            | M::ReadinessEvent
            | M::DnsListResponse
            | M::DnsSetUpstreamsResponse
            | M::FileReadResponse
            | M::FileWriteResponse
            | M::FileStatResponse
            | M::FileListResponse
            | M::FileMkdirResponse
            | M::FileRemoveResponse
            | M::ExecStartResponse
            | M::ExecOutput
            | M::ExecWaitResponse
            | M::ExecSignalResponse
            | M::ExecResizeResponse
            | M::ExecListResponse
            | M::ExecStarted
            | M::ExecGap
            | M::ExecExit
            | M::ExecInputAck
            | M::CopyResult
            | M::CopyOutput
            | M::CopyAck
            | M::StatsResponse
            | M::StatsSample
            | M::FsFreezeResponse
            | M::FsThawResponse
            | M::FsFreezeStatusResponse
            | M::SyncClockResponse
            | M::Error => None,
        }
    }

    /// The request codes of this group.
    fn codes(self) -> impl Iterator<Item = u32> {
        MessageType::ALL.iter().filter(move |t| Group::of(**t) == Some(self)).map(|t| t.code())
    }
}

/// A listening service besides the RPC port that the policy can turn off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The Docker API proxy (guest vsock 2375).
    DockerProxy,
    /// The Kubernetes API proxy (guest vsock 16443).
    KubernetesProxy,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 2] = [Service::DockerProxy, Service::KubernetesProxy];

    /// The name used in allow and deny lists.
    pub const fn name(self) -> &'static str {
        match self {
            Service::DockerProxy => "docker-proxy",
            Service::KubernetesProxy => "kubernetes-proxy",
        }
    }
}

/// What one name in a list stands for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Selection {
    codes: Vec<u32>,
    services: Vec<Service>,
}

/// What a list entry must look like, for the error message.
const NAME_EXPECTED: &str = "a request name (ExecStartRequest or ExecStart), a request code (0x0F01), a group \
     (status, runtime, kubernetes, shutdown, files, files.read, files.write, exec, sandbox, stats, freeze, \
     clock, dns) or a service (docker-proxy, kubernetes-proxy)";

/// Resolves one list entry; `None` when it names nothing known.
fn select(name: &str) -> Option<Selection> {
    let requests = |codes: Vec<u32>| Some(Selection { codes, services: Vec::new() });
    if name == "files" {
        return requests(Group::FilesRead.codes().chain(Group::FilesWrite.codes()).collect());
    }
    if let Some(group) = Group::ALL.into_iter().find(|g| g.name() == name) {
        return requests(group.codes().collect());
    }
    if let Some(service) = Service::ALL.into_iter().find(|s| s.name() == name) {
        return Some(Selection { codes: Vec::new(), services: vec![service] });
    }
    if name == "k8s-proxy" {
        return Some(Selection { codes: Vec::new(), services: vec![Service::KubernetesProxy] });
    }
    if let Some(hex) = name.strip_prefix("0x").or_else(|| name.strip_prefix("0X")) {
        let code = u32::from_str_radix(hex, 16).ok()?;
        return (code != 0 && code < RESPONSE_BIT).then(|| requests(vec![code]))?;
    }
    MessageType::ALL
        .iter()
        .find(|t| t.is_request() && (t.name() == name || t.name().strip_suffix("Request") == Some(name)))
        .and_then(|t| requests(vec![t.code()]))
}

/// The compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPolicy {
    /// `None`: every request not denied.
    allowed: Option<HashSet<u32>>,
    denied: HashSet<u32>,
    /// `None`: every service not denied.
    allowed_services: Option<HashSet<Service>>,
    denied_services: HashSet<Service>,
}

impl Default for RequestPolicy {
    /// Everything allowed.
    fn default() -> Self {
        Self {
            allowed: None,
            denied: HashSet::new(),
            allowed_services: None,
            denied_services: HashSet::new(),
        }
    }
}

impl RequestPolicy {
    /// Compiles `[auth]`: the allow list (empty: everything), minus the
    /// deny list and what the switches turn off. Names that stand for
    /// nothing are returned as problems and skipped.
    pub fn from_config(auth: &AuthConfig) -> (Self, Vec<ConfigError>) {
        let mut problems = Vec::new();
        let mut resolve = |list: &'static str, names: &[String]| {
            let mut all = Selection::default();
            for name in names {
                match select(name.trim()) {
                    Some(mut one) => {
                        all.codes.append(&mut one.codes);
                        all.services.append(&mut one.services);
                    }
                    None => problems.push(ConfigError::Value {
                        key: format!("[auth] {list}"),
                        value: name.clone(),
                        expected: NAME_EXPECTED,
                    }),
                }
            }
            all
        };
        let allow = resolve("allow", &auth.allow);
        let mut deny = resolve("deny", &auth.deny);
        let switched_off = [
            (auth.exec, Group::Exec.codes().collect(), None),
            (auth.file_writes, Group::FilesWrite.codes().collect(), None),
            (auth.docker_proxy, Vec::new(), Some(Service::DockerProxy)),
            (auth.kubernetes_proxy, Vec::new(), Some(Service::KubernetesProxy)),
        ];
        for (on, codes, service) in switched_off {
            if !on {
                deny.codes.extend(codes);
                deny.services.extend(service);
            }
        }
        // An allow list whose every name was unknown still restricts: a typo
        // must not widen what the host may do.
        let restricted = !auth.allow.is_empty();
        let policy = Self {
            allowed: restricted.then(|| allow.codes.into_iter().collect()),
            denied: deny.codes.into_iter().collect(),
            allowed_services: restricted.then(|| allow.services.into_iter().collect()),
            denied_services: deny.services.into_iter().collect(),
        };
        (policy, problems)
    }

    /// Whether a request of type `code` may be served.
    pub fn permits(&self, code: u32) -> bool {
        // The default policy (no lists) answers without hashing: this runs for every request.
        if (self.allowed.is_none() && self.denied.is_empty())
            || ALWAYS_ALLOWED.iter().any(|t| t.code() == code)
        {
            return true;
        }
        !self.denied.contains(&code) && self.allowed.as_ref().is_none_or(|allowed| allowed.contains(&code))
    }

    /// Whether `service` may listen.
    pub fn serves(&self, service: Service) -> bool {
        !self.denied_services.contains(&service)
            && self.allowed_services.as_ref().is_none_or(|allowed| allowed.contains(&service))
    }

    /// The known request types this policy refuses, for the startup log.
    pub fn refused_types(&self) -> Vec<&'static str> {
        MessageType::ALL
            .iter()
            .filter(|t| t.is_request() && !self.permits(t.code()))
            .map(|t| t.name())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(edit: impl FnOnce(&mut AuthConfig)) -> RequestPolicy {
        let mut auth = AuthConfig::default();
        edit(&mut auth);
        let (policy, problems) = RequestPolicy::from_config(&auth);
        assert!(problems.is_empty(), "{problems:?}");
        policy
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn by_default_every_request_and_service_is_allowed() {
        let p = policy(|_| {});
        assert!(MessageType::ALL.iter().all(|t| p.permits(t.code())));
        assert!(p.permits(0x0F01), "an embedder's request");
        assert!(Service::ALL.into_iter().all(|s| p.serves(s)));
        assert!(p.refused_types().is_empty());
    }

    #[test]
    fn names_codes_groups_and_services_all_resolve() {
        let p =
            policy(|a| a.allow = names(&["ExecStartRequest", "FileRead", "0x0F01", "dns", "docker-proxy"]));
        for t in [
            MessageType::ExecStartRequest,
            MessageType::FileReadRequest,
            MessageType::DnsListRequest,
            MessageType::DnsSetUpstreamsRequest,
        ] {
            assert!(p.permits(t.code()), "{t}");
        }
        assert!(p.permits(0x0F01));
        assert!(!p.permits(MessageType::ExecRunRequest.code()));
        assert!(!p.permits(MessageType::FileWriteRequest.code()));
        assert!(!p.permits(0x0F02));
        assert!(p.serves(Service::DockerProxy));
        assert!(
            !p.serves(Service::KubernetesProxy),
            "an allow list that does not name a service turns it off"
        );
    }

    #[test]
    fn the_deny_list_and_switches_remove_from_what_is_allowed() {
        let p = policy(|a| {
            a.allow = names(&["files", "exec", "k8s-proxy", "docker-proxy"]);
            a.deny = names(&["FileRemove", "kubernetes-proxy"]);
            a.exec = false;
            a.docker_proxy = false;
        });
        assert!(p.permits(MessageType::FileWriteRequest.code()));
        assert!(!p.permits(MessageType::FileRemoveRequest.code()));
        assert!(!p.permits(MessageType::ExecStartRequest.code()), "exec = false wins over allow");
        assert!(!p.serves(Service::DockerProxy) && !p.serves(Service::KubernetesProxy));
        let writes = policy(|a| a.file_writes = false);
        let refused = writes.refused_types();
        assert_eq!(refused, ["FileWriteRequest", "FileMkdirRequest", "FileRemoveRequest", "CopyInRequest"]);
    }

    #[test]
    fn ping_system_info_and_thaw_cannot_be_denied() {
        let p = policy(|a| {
            a.allow = names(&["ExecList"]);
            a.deny = names(&["status", "freeze"]);
        });
        for t in ALWAYS_ALLOWED {
            assert!(p.permits(t.code()), "{t}");
        }
        assert!(!p.permits(MessageType::BootReportRequest.code()));
        assert!(!p.permits(MessageType::FsFreezeRequest.code()));
    }

    #[test]
    fn unknown_names_are_reported_and_an_allow_list_of_typos_allows_nothing_more() {
        let auth = AuthConfig {
            allow: names(&["ExecStratRequest", "PingResponse", "0x1001", "0xZZ"]),
            deny: names(&["nope"]),
            ..AuthConfig::default()
        };
        let (p, problems) = RequestPolicy::from_config(&auth);
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems[0].to_string().contains("[auth] allow"), "{}", problems[0]);
        assert!(problems[4].to_string().contains("[auth] deny"), "{}", problems[4]);
        assert!(!p.permits(MessageType::ExecStartRequest.code()));
        assert!(p.permits(MessageType::PingRequest.code()));
        assert!(!p.serves(Service::DockerProxy));
    }

    #[test]
    fn every_request_type_has_a_group_and_no_other_type_does() {
        for &t in MessageType::ALL {
            assert_eq!(Group::of(t).is_some(), t.is_request(), "{t}");
        }
    }
}
