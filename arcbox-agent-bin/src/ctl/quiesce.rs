//! `arcbox-agentctl freeze`, `thaw TOKEN`, `freeze-status` and `time sync`.

use std::time::{Duration, Instant};

use arcbox_agent_wire::client::{AgentClient, ClientError};
use arcbox_agent_wire::protocol::proto::agent::{
    FsFreezeResponse, FsFreezeStatusResponse, FsThawResponse, SyncClockRequest, SyncClockResponse,
};
use clap::Subcommand;

use super::{Exit, Output};

/// What to do with the guest clock.
#[derive(Debug, Subcommand)]
pub(super) enum TimeAction {
    /// Send the host's time; the guest steps (past the threshold) or slews.
    Sync {
        /// The host woke from sleep or resumed the VM: step whatever the offset.
        #[arg(long)]
        woke: bool,
        /// Step past this many milliseconds (default 100).
        #[arg(long)]
        threshold_ms: Option<u64>,
        /// Use the host's time even when the guest has ptp_kvm.
        #[arg(long)]
        prefer_host: bool,
        /// Measure only.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Freezes; prints the token (alone on stdout's first line, for scripts).
pub(super) async fn freeze(
    client: &mut AgentClient,
    out: &Output,
    timeout: u32,
    pause_runtime: bool,
) -> Result<Exit, ClientError> {
    let r = client.fs_freeze(timeout, pause_runtime).await?;
    out.emit(&r, || frozen_text(&r));
    Ok(Exit::Success)
}

pub(super) async fn thaw(
    client: &mut AgentClient,
    out: &Output,
    token: &str,
    force: bool,
) -> Result<Exit, ClientError> {
    let r = client.fs_thaw(token, force).await?;
    out.emit(&r, || thawed_text(&r));
    Ok(if r.errors.is_empty() { Exit::Success } else { Exit::Failed })
}

pub(super) async fn status(client: &mut AgentClient, out: &Output) -> Result<Exit, ClientError> {
    let r = client.fs_freeze_status().await?;
    out.emit(&r, || status_text(&r));
    Ok(Exit::Success)
}

pub(super) async fn time(
    client: &mut AgentClient,
    out: &Output,
    action: &TimeAction,
) -> Result<Exit, ClientError> {
    let TimeAction::Sync { woke, threshold_ms, prefer_host, dry_run } = action;
    // One ping first measures the round trip the sync then corrects by half.
    let started = Instant::now();
    client.ping(None).await?;
    let round_trip = started.elapsed();
    let request = SyncClockRequest {
        host_unix_nanos: now_nanos(),
        round_trip_nanos: round_trip.as_nanos() as u64,
        step_threshold_nanos: threshold_ms.map(|ms| ms * 1_000_000).unwrap_or(0),
        woke: *woke,
        dry_run: *dry_run,
        prefer_host: *prefer_host,
    };
    let r = client.sync_clock(request).await?;
    out.emit(&r, || sync_text(&r));
    Ok(Exit::Success)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn ms(nanos: i64) -> String {
    format!("{:+.3} ms", nanos as f64 / 1e6)
}

fn frozen_text(r: &FsFreezeResponse) -> String {
    let mut lines = vec![r.token.clone()];
    lines.push(format!(
        "frozen {} filesystem(s) in {:.1} ms; automatic thaw in {} s; thaw with: arcbox-agentctl thaw {}",
        r.frozen.len(),
        r.freeze_micros as f64 / 1e3,
        Duration::from_millis(r.auto_thaw_millis).as_secs_f64(),
        r.token
    ));
    lines.extend(
        r.frozen.iter().map(|f| format!("  frozen   {} ({}, {})", f.mount_point, f.fstype, f.source)),
    );
    lines.extend(
        r.skipped.iter().map(|f| format!("  skipped  {} ({}): {}", f.mount_point, f.fstype, f.reason)),
    );
    if !r.paused.is_empty() {
        lines.push(format!("  paused   {}", r.paused.join(", ")));
    }
    lines.join("\n")
}

fn thawed_text(r: &FsThawResponse) -> String {
    if !r.was_frozen {
        return "not frozen (nothing to thaw; see freeze-status for the last thaw)".to_owned();
    }
    let mut lines = vec![format!(
        "thawed {} filesystem(s) in {:.1} ms after {:.3} s frozen",
        r.thawed.len(),
        r.thaw_micros as f64 / 1e3,
        r.frozen_millis as f64 / 1e3
    )];
    if !r.resumed.is_empty() {
        lines.push(format!("  resumed  {}", r.resumed.join(", ")));
    }
    lines.extend(r.errors.iter().map(|e| format!("  error    {e}")));
    lines.join("\n")
}

fn status_text(r: &FsFreezeStatusResponse) -> String {
    let mut lines = vec![match r.state.as_str() {
        "frozen" => format!(
            "frozen for {:.1} s, automatic thaw in {:.1} s: {}",
            r.frozen_millis as f64 / 1e3,
            r.auto_thaw_in_millis as f64 / 1e3,
            r.frozen.join(", ")
        ),
        other => other.to_owned(),
    }];
    if !r.last_thaw.is_empty() {
        lines.push(format!(
            "last thaw by {} after {:.3} s frozen",
            r.last_thaw,
            r.last_frozen_millis as f64 / 1e3
        ));
    }
    lines.push(format!(
        "automatic thaws {}, requests refused while frozen {}",
        r.auto_thaws, r.refused_requests
    ));
    lines.join("\n")
}

fn sync_text(r: &SyncClockResponse) -> String {
    let mut line = format!("offset {} (source {}), action {}", ms(r.offset_nanos), r.source, r.action);
    if r.slew_remaining_nanos != 0 {
        line.push_str(&format!(
            "; slewing {} over {:.1} s",
            ms(r.slew_remaining_nanos),
            r.slew_millis as f64 / 1e3
        ));
    }
    if !r.ptp_device.is_empty() {
        line.push_str(&format!("; {} reads {}", r.ptp_device, ms(r.ptp_offset_nanos)));
    }
    if !r.ptp_error.is_empty() {
        line.push_str(&format!("; ptp unreadable: {}", r.ptp_error));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freeze_text_starts_with_the_bare_token() {
        let r = FsFreezeResponse { token: "abc".into(), auto_thaw_millis: 10_000, ..Default::default() };
        let text = frozen_text(&r);
        assert_eq!(text.lines().next(), Some("abc"));
        assert!(text.contains("thaw with: arcbox-agentctl thaw abc"), "{text}");
    }

    #[test]
    fn the_sync_text_names_offset_source_and_action() {
        let r = SyncClockResponse {
            source: "host".into(),
            action: "slewed".into(),
            offset_nanos: -20_000_000,
            slew_remaining_nanos: -20_000_000,
            slew_millis: 40_000,
            ..Default::default()
        };
        assert_eq!(
            sync_text(&r),
            "offset -20.000 ms (source host), action slewed; slewing -20.000 ms over 40.0 s"
        );
    }
}
