//! The human rendering of the agent's answers (`--json` prints them as
//! they are instead).

use std::fmt::Write as _;
use std::time::Duration;

use arcbox_agent_wire::protocol::MessageType;
use arcbox_agent_wire::protocol::proto::agent::{
    AgentPingResponse, BootReport, DnsListResponse, FileInfo, FileListResponse, KubernetesStartResponse,
    KubernetesStatusResponse, KubernetesStopResponse, NetworkStatus, ReadinessEvent, RuntimeEnsureResponse,
    RuntimeStatusResponse, ServiceStatus, SystemInfo,
};

pub fn pong(pong: &AgentPingResponse, rtt: Duration) -> String {
    let names: Vec<String> = pong.capabilities.iter().map(|c| type_name(*c)).collect();
    let mut text = format!(
        "{} from arcbox-agent {} (protocol {}, boot {}) in {:.2} ms\ncapabilities: {}",
        pong.message,
        pong.version,
        pong.protocol_version,
        pong.boot_id,
        rtt.as_secs_f64() * 1e3,
        names.join(", ")
    );
    if !pong.clock.is_empty() {
        let _ = write!(text, "\nclock: {}", pong.clock);
    }
    text
}

pub fn info(info: &SystemInfo) -> String {
    let mut text = format!(
        "hostname:   {}\nkernel:     {} {} ({})\nos:         {}\ncpus:       {}\nmemory:     {} MiB total, {} MiB available\nload:       {:?}\nuptime:     {} s\naddresses:  {}\nagent rss:  {} KiB after {} requests",
        info.hostname,
        info.os_name,
        info.kernel_version,
        info.arch,
        info.os_version,
        info.cpu_count,
        info.total_memory >> 20,
        info.available_memory >> 20,
        info.load_average,
        info.uptime,
        if info.ip_addresses.is_empty() { "(none)".to_owned() } else { info.ip_addresses.join(" ") },
        info.agent_rss_bytes >> 10,
        info.agent_requests_served,
    );
    if let Some(net) = &info.network {
        let _ = write!(text, "\nnetwork:    {}", network(net));
    }
    let _ = write!(text, "\nrefused:    {}", refusals(info));
    text
}

/// What the agent's policy refused: denied requests per type, and peers.
fn refusals(info: &SystemInfo) -> String {
    let mut line = format!("{} requests denied", info.agent_requests_denied);
    if !info.agent_denied.is_empty() {
        let each: Vec<String> =
            info.agent_denied.iter().map(|d| format!("{} {}", d.request, d.count)).collect();
        let _ = write!(line, " ({})", each.join(", "));
    }
    let _ = write!(line, ", {} connections from other CIDs closed", info.agent_peers_refused);
    line
}

/// The guest network in one line: state, interface, address, lease or why none.
pub fn network(net: &NetworkStatus) -> String {
    let mut line = net.state.clone();
    if !net.interface.is_empty() {
        let _ = write!(line, " on {}", net.interface);
    }
    if !net.address.is_empty() {
        let _ = write!(line, ": {}", net.address);
    }
    if !net.gateway.is_empty() {
        let _ = write!(line, " via {}", net.gateway);
    }
    if !net.dns.is_empty() {
        let _ = write!(line, ", dns {}", net.dns.join(" "));
    }
    if net.mtu != 0 {
        let _ = write!(line, ", mtu {}", net.mtu);
    }
    if !net.dhcp_server.is_empty() {
        let _ = write!(
            line,
            " (lease {} s from {}, renew at {} s, {} renewals)",
            net.lease_secs, net.dhcp_server, net.renew_secs, net.renewals
        );
    }
    if !net.reason.is_empty() {
        let _ = write!(line, " ({})", net.reason);
    }
    line
}

pub fn ensure(answer: &RuntimeEnsureResponse) -> String {
    let mut text = format!("runtime {}: {}", answer.status, answer.message);
    if !answer.endpoint.is_empty() {
        let _ = write!(text, "\nendpoint: {}", answer.endpoint);
    }
    text
}

pub fn runtime_status(status: &RuntimeStatusResponse) -> String {
    let mut text = format!(
        "state: {}\ncontainerd ready: {}\ndocker ready: {}\nendpoint: {}\ndetail: {}",
        if status.state.is_empty() { "(not reported)" } else { &status.state },
        status.containerd_ready,
        status.docker_ready,
        status.endpoint,
        status.detail
    );
    services(&mut text, &status.services);
    text
}

/// One line of `ensure-runtime --wait` progress: each service and its state.
pub fn service_states(status: &RuntimeStatusResponse) -> String {
    status.services.iter().map(|s| format!("{} {}", s.name, s.status)).collect::<Vec<_>>().join(", ")
}

/// Appends one indented line per service.
fn services(text: &mut String, services: &[ServiceStatus]) {
    for s in services {
        let _ = write!(text, "\n  {:<10} {:<9} {}", s.name, s.status, s.detail);
        if s.pid != 0 {
            let _ = write!(text, " (pid {}, up {} s)", s.pid, s.uptime_secs);
        }
    }
}

/// The boot report. `waited`: the host already waited for init (so the
/// hint to use `--wait` would be beside the point).
pub fn boot_report(report: &BootReport, waited: bool) -> String {
    let init = match report.init_complete_us {
        0 if waited => "not yet (init still running)".to_owned(),
        0 => "not yet (init still running; use --wait)".to_owned(),
        us => format!("{:.3} ms after agent start", us as f64 / 1e3),
    };
    let mut text = format!(
        "boot {} (agent {}, pid1: {})\nkernel uptime at agent start: {:.3} s\nlistener ready: {:.3} ms after agent start\ninit complete:  {init}",
        report.boot_id,
        report.agent_version,
        report.pid1,
        report.kernel_uptime_at_start_secs,
        report.listener_ready_us as f64 / 1e3,
    );
    if let Some(net) = &report.network {
        let _ = write!(text, "\nnetwork: {}", network(net));
    }
    for step in &report.steps {
        let _ = write!(
            text,
            "\n  {:<8} {:>9.3} ms  {}{}{}",
            step.outcome,
            step.duration_us as f64 / 1e3,
            step.name,
            if step.reason.is_empty() { "" } else { ": " },
            step.reason
        );
    }
    text
}

/// One readiness event, stamped with the time since the watch began.
pub fn event(event: &ReadinessEvent, since_start: Duration) -> String {
    let mut line = format!("[{:8.3}s] {}", since_start.as_secs_f64(), event.kind);
    if !event.service.is_empty() {
        let _ = write!(line, " {}", event.service);
    }
    if event.pid != 0 {
        let _ = write!(line, " (pid {})", event.pid);
    }
    if !event.reason.is_empty() {
        let _ = write!(line, ": {}", event.reason);
    }
    line
}

pub fn k8s_start(r: &KubernetesStartResponse) -> String {
    let state = match (r.running, r.api_ready) {
        (_, true) => "k3s running, API ready",
        (true, false) => "k3s starting, API not ready yet (watch --until kubernetes_ready)",
        (false, false) => "k3s not running",
    };
    let mut text = format!("{state}: {}", r.detail);
    if !r.endpoint.is_empty() {
        let _ = write!(text, "\nendpoint: {}", r.endpoint);
    }
    text
}

pub fn k8s_stop(r: &KubernetesStopResponse) -> String {
    match (r.stopped, r.detail.is_empty()) {
        (true, true) => "k3s stopped".to_owned(),
        (true, false) => r.detail.clone(),
        (false, _) => format!("k3s not stopped: {}", r.detail),
    }
}

pub fn k8s_status(r: &KubernetesStatusResponse) -> String {
    let state = match (r.running, r.api_ready) {
        (true, true) => "running, API ready",
        (true, false) => "running, API not ready",
        (false, true) => "not running, API answering",
        (false, false) => "not running",
    };
    let mut text = format!("k3s: {state}\nendpoint: {}\ndetail: {}", r.endpoint, r.detail);
    services(&mut text, &r.services);
    text
}

/// The DNS server's zone, upstreams and one line per registered name.
pub fn dns_list(r: &DnsListResponse) -> String {
    let mut text = format!("zone: {}\nupstreams: {}", r.zone, r.upstreams.join(", "));
    if r.names.is_empty() {
        text.push_str("\nno names registered");
    }
    for name in &r.names {
        let _ = write!(text, "\n  {:<24} {}", name.name, name.addresses.join(", "));
    }
    text
}

/// A request type's name without the `Request` suffix, or its code.
fn type_name(code: u32) -> String {
    MessageType::from_u32(code)
        .map(|t| t.name().trim_end_matches("Request").to_owned())
        .unwrap_or_else(|| format!("0x{code:04X}"))
}

/// One path's metadata.
pub fn file_stat(info: &FileInfo) -> String {
    let mut text = format!(
        "{}: {} {:o}, {} bytes, uid {} gid {}, modified {} s after the epoch",
        info.name,
        info.kind,
        info.mode,
        info.size,
        info.uid,
        info.gid,
        info.mtime_unix_nanos / 1_000_000_000
    );
    if !info.symlink_target.is_empty() {
        let _ = write!(text, "\n-> {}", info.symlink_target);
    }
    text
}

/// A directory listing, `ls -l` style: kind, mode, size, name.
pub fn file_list(listing: &FileListResponse) -> String {
    let mut lines: Vec<String> = listing
        .entries
        .iter()
        .map(|e| format!("{:<7} {:>4o} {:>12}  {}", e.kind, e.mode, e.size, e.name))
        .collect();
    if listing.truncated {
        lines.push("... (more entries than the agent returns at once)".to_owned());
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_report_before_init_completes_says_so_instead_of_a_zero_time() {
        let report = BootReport { listener_ready_us: 2_000, init_complete_us: 0, ..BootReport::default() };
        let text = boot_report(&report, false);
        assert!(text.contains("init complete:  not yet (init still running; use --wait)"), "{text}");
        let waited = boot_report(&report, true);
        assert!(waited.contains("init complete:  not yet (init still running)"), "{waited}");
        assert!(!waited.contains("use --wait"), "{waited}");
        let done = boot_report(&BootReport { init_complete_us: 25_250, ..report }, false);
        assert!(done.contains("init complete:  25.250 ms after agent start"), "{done}");
    }

    #[test]
    fn info_shows_what_the_policy_refused() {
        use arcbox_agent_wire::protocol::proto::agent::DeniedRequests;
        let denied = |request: &str, code, count| DeniedRequests { request: request.into(), code, count };
        let info = SystemInfo {
            agent_requests_denied: 3,
            agent_denied: vec![denied("FileWriteRequest", 0x0105, 1), denied("ExecListRequest", 0x0115, 2)],
            agent_peers_refused: 4,
            ..SystemInfo::default()
        };
        let text = super::info(&info);
        assert!(
            text.ends_with(
                "refused:    3 requests denied (FileWriteRequest 1, ExecListRequest 2), 4 connections from other CIDs closed"
            ),
            "{text}"
        );
        let none = super::info(&SystemInfo::default());
        assert!(
            none.ends_with("refused:    0 requests denied, 0 connections from other CIDs closed"),
            "{none}"
        );
    }

    #[test]
    fn k8s_status_names_the_state_and_each_service() {
        let r = KubernetesStatusResponse {
            running: true,
            api_ready: false,
            endpoint: "https://127.0.0.1:16443".into(),
            detail: "k3s: starting".into(),
            services: vec![ServiceStatus {
                name: "k3s".into(),
                status: "not_ready".into(),
                detail: "waiting for its API".into(),
                pid: 7,
                uptime_secs: 2,
            }],
        };
        assert_eq!(
            k8s_status(&r),
            "k3s: running, API not ready\nendpoint: https://127.0.0.1:16443\ndetail: k3s: starting\n  \
             k3s        not_ready waiting for its API (pid 7, up 2 s)"
        );
    }

    #[test]
    fn unknown_capabilities_show_their_code() {
        assert_eq!(type_name(MessageType::PingRequest.code()), "Ping");
        assert_eq!(type_name(0x0FFE), "0x0FFE");
    }
}
