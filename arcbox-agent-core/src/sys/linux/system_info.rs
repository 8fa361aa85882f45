//! GetSystemInfo from uname(2), /proc and getifaddrs(3).

use std::net::IpAddr;

use crate::protocol::proto::agent::SystemInfo;
use crate::sys::{SysError, SystemInfoSource};

/// Reads the running kernel's view of the system.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSystemInfo;

impl SystemInfoSource for LinuxSystemInfo {
    fn collect(&self) -> Result<SystemInfo, SysError> {
        let uts = nix::sys::utsname::uname().map_err(|e| SysError::io("uname", "", e.into()))?;
        let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        let meminfo = read_proc("/proc/meminfo")?;
        let loadavg = read_proc("/proc/loadavg")?;
        let uptime = read_proc("/proc/uptime")?;
        Ok(SystemInfo {
            kernel_version: text(uts.release()),
            os_name: text(uts.sysname()),
            os_version: text(uts.version()),
            arch: text(uts.machine()),
            total_memory: meminfo_bytes(&meminfo, "MemTotal:").unwrap_or(0),
            available_memory: meminfo_bytes(&meminfo, "MemAvailable:").unwrap_or(0),
            cpu_count: online_cpus(),
            load_average: parse_loadavg(&loadavg),
            hostname: text(uts.nodename()),
            uptime: parse_uptime_secs(&uptime).unwrap_or(0.0) as u64,
            ip_addresses: interface_addresses()?,
            ..Default::default()
        })
    }

    fn process_rss_bytes(&self) -> Result<u64, SysError> {
        let statm = read_proc("/proc/self/statm")?;
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| SysError::Parse { what: "/proc/self/statm", detail: statm.clone() })?;
        // SAFETY: sysconf has no preconditions and only reads a constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Ok(pages * u64::try_from(page).unwrap_or(4096))
    }
}

fn read_proc(path: &'static str) -> Result<String, SysError> {
    std::fs::read_to_string(path).map_err(|e| SysError::io("read", path, e))
}

/// CPUs the kernel has online (sysconf), not the agent's affinity mask.
fn online_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(1).max(1)
}

/// A `/proc/meminfo` value in bytes (the file gives kB).
pub(crate) fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

pub(crate) fn parse_loadavg(loadavg: &str) -> Vec<f64> {
    loadavg.split_whitespace().take(3).filter_map(|v| v.parse().ok()).collect()
}

pub(crate) fn parse_uptime_secs(uptime: &str) -> Option<f64> {
    uptime.split_whitespace().next()?.parse().ok()
}

/// Every non-loopback IPv4 and IPv6 address of every interface that is
/// up, from the kernel (getifaddrs), in interface order, deduplicated.
/// IPv6 link-local addresses are left out, as `hostname -I` does.
fn interface_addresses() -> Result<Vec<String>, SysError> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| SysError::io("getifaddrs", "", e.into()))?;
    let mut out: Vec<String> = Vec::new();
    for ifa in addrs {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP) || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let keep = match ip {
            IpAddr::V4(v4) => !v4.is_loopback(),
            IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        };
        let text = ip.to_string();
        if keep && !out.contains(&text) {
            out.push(text);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_values_are_converted_from_kib() {
        let text = "MemTotal:        2031616 kB\nMemFree:  100 kB\nMemAvailable:    1500000 kB\n";
        assert_eq!(meminfo_bytes(text, "MemTotal:"), Some(2_031_616 * 1024));
        assert_eq!(meminfo_bytes(text, "MemAvailable:"), Some(1_500_000 * 1024));
        assert_eq!(meminfo_bytes(text, "SwapTotal:"), None);
    }

    #[test]
    fn loadavg_and_uptime_parse() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 2/345 12345\n"), vec![0.52, 0.58, 0.59]);
        assert_eq!(parse_uptime_secs("350735.47 234388.90\n"), Some(350_735.47));
        assert_eq!(parse_uptime_secs(""), None);
    }

    #[test]
    fn the_real_system_reports_consistent_values() {
        let info = LinuxSystemInfo.collect().unwrap();
        assert_eq!(info.os_name, "Linux");
        assert!(!info.kernel_version.is_empty());
        assert!(info.total_memory > 0 && info.available_memory <= info.total_memory);
        assert!(info.cpu_count >= 1);
        assert_eq!(info.load_average.len(), 3);
        assert!(info.ip_addresses.iter().all(|ip| ip != "127.0.0.1" && ip != "::1"));
        assert!(LinuxSystemInfo.process_rss_bytes().unwrap() > 0);
    }
}
