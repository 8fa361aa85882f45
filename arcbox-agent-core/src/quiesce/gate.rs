//! The freeze state as requests see it: a cheap handle that decorators
//! consult before a request that would block on a frozen filesystem.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the guest's filesystems are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezePhase {
    /// Writable.
    Thawed,
    /// FIFREEZE calls are running (dirty data is being written out).
    Freezing,
    /// Frozen until a thaw or the automatic thaw.
    Frozen,
}

impl FreezePhase {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            FreezePhase::Thawed => "thawed",
            FreezePhase::Freezing => "freezing",
            FreezePhase::Frozen => "frozen",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => FreezePhase::Freezing,
            2 => FreezePhase::Frozen,
            _ => FreezePhase::Thawed,
        }
    }
}

/// Why a request was refused while frozen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: the guest's filesystems are {} (FsFreeze); thaw them first{}", .phase.name(), auto_thaw(.auto_thaw_in))]
pub struct FrozenRefusal {
    /// Freezing or frozen.
    pub phase: FreezePhase,
    /// When the watchdog thaws by itself, if it is armed.
    pub auto_thaw_in: Option<Duration>,
}

fn auto_thaw(left: &Option<Duration>) -> String {
    left.map(|d| format!(", or wait for the automatic thaw in {:.1} s", d.as_secs_f64())).unwrap_or_default()
}

#[derive(Debug, Default)]
struct Shared {
    phase: AtomicU8,
    refused: AtomicU64,
    deadline: Mutex<Option<Instant>>,
}

/// The freeze state, shared by the quiescer (which sets it) and the
/// request decorators (which read it). The default is always thawed.
#[derive(Debug, Clone, Default)]
pub struct FreezeGate(Arc<Shared>);

impl FreezeGate {
    /// The current phase.
    pub fn phase(&self) -> FreezePhase {
        FreezePhase::from_u8(self.0.phase.load(Ordering::Acquire))
    }

    /// Ok when thawed; otherwise the refusal (and it is counted).
    pub fn admit(&self) -> Result<(), FrozenRefusal> {
        let phase = self.phase();
        if phase == FreezePhase::Thawed {
            return Ok(());
        }
        self.0.refused.fetch_add(1, Ordering::Relaxed);
        Err(FrozenRefusal { phase, auto_thaw_in: self.auto_thaw_in() })
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Time left before the automatic thaw, while frozen.
    pub fn auto_thaw_in(&self) -> Option<Duration> {
        let deadline = *self.0.deadline.lock().unwrap_or_else(|p| p.into_inner());
        deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub(super) fn set(&self, phase: FreezePhase, deadline: Option<Instant>) {
        *self.0.deadline.lock().unwrap_or_else(|p| p.into_inner()) = deadline;
        let v = match phase {
            FreezePhase::Thawed => 0,
            FreezePhase::Freezing => 1,
            FreezePhase::Frozen => 2,
        };
        self.0.phase.store(v, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_gate_refuses_counts_and_names_the_automatic_thaw() {
        let gate = FreezeGate::default();
        assert!(gate.admit().is_ok());
        gate.set(FreezePhase::Frozen, Some(Instant::now() + Duration::from_secs(9)));
        let refusal = gate.admit().unwrap_err();
        let text = refusal.to_string();
        assert!(text.starts_with("refused: the guest's filesystems are frozen"), "{text}");
        assert!(text.contains("automatic thaw in 8.") || text.contains("automatic thaw in 9.0"), "{text}");
        assert_eq!(gate.refused(), 1);
        gate.set(FreezePhase::Thawed, None);
        assert!(gate.admit().is_ok());
        assert_eq!(gate.auto_thaw_in(), None);
    }
}
