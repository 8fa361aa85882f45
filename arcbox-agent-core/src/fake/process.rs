//! A fake spawner with scripted exits and a fake process table whose
//! processes obey (or ignore) SIGTERM.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::sys::{
    ChildProcess, ExitStatus, ProcessEntry, ProcessSpawner, ProcessSpec, ProcessTable, SignalOutcome,
    SysError,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fake [`ProcessSpawner`]: records specs, children exit at once with
/// the status scripted for their program (default 0).
#[derive(Default)]
pub struct FakeSpawner {
    spawned: Mutex<Vec<ProcessSpec>>,
    exits: Mutex<HashMap<PathBuf, ExitStatus>>,
}

impl FakeSpawner {
    /// Children of `program` will exit with `status`.
    pub fn script_exit(&self, program: impl Into<PathBuf>, status: ExitStatus) {
        lock(&self.exits).insert(program.into(), status);
    }

    /// Every spec spawned so far.
    pub fn spawned(&self) -> Vec<ProcessSpec> {
        lock(&self.spawned).clone()
    }
}

struct FakeChild {
    pid: u32,
    status: ExitStatus,
}

#[async_trait::async_trait]
impl ChildProcess for FakeChild {
    fn pid(&self) -> u32 {
        self.pid
    }
    async fn wait(&mut self) -> Result<ExitStatus, SysError> {
        Ok(self.status)
    }
    fn signal(&self, _signal: i32) -> Result<(), SysError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl ProcessSpawner for FakeSpawner {
    async fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn ChildProcess>, SysError> {
        let status = lock(&self.exits).get(&spec.program).copied().unwrap_or(ExitStatus::Code(0));
        let mut spawned = lock(&self.spawned);
        spawned.push(spec.clone());
        let pid = 1000 + u32::try_from(spawned.len()).unwrap_or(0);
        Ok(Box::new(FakeChild { pid, status }))
    }
}

struct FakeProc {
    name: String,
    ignores_term: bool,
}

/// A fake [`ProcessTable`] with this process as PID 1. A process exits on
/// SIGTERM unless told to ignore it; SIGKILL always ends it.
#[derive(Default)]
pub struct FakeProcessTable {
    procs: Mutex<BTreeMap<u32, FakeProc>>,
    signals: Mutex<Vec<(String, i32)>>,
}

impl FakeProcessTable {
    /// Adds a process.
    pub fn add(&self, pid: u32, name: &str, ignores_term: bool) {
        lock(&self.procs).insert(pid, FakeProc { name: name.into(), ignores_term });
    }

    /// Signals sent so far, as (process name, signal).
    pub fn signals(&self) -> Vec<(String, i32)> {
        lock(&self.signals).clone()
    }
}

impl ProcessTable for FakeProcessTable {
    fn processes(&self) -> Result<Vec<ProcessEntry>, SysError> {
        let mut out = vec![ProcessEntry {
            pid: 1,
            ppid: 0,
            name: "arcbox-agent".into(),
            kernel_thread: false,
            zombie: false,
        }];
        out.extend(lock(&self.procs).iter().map(|(pid, p)| ProcessEntry {
            pid: *pid,
            ppid: 1,
            name: p.name.clone(),
            kernel_thread: false,
            zombie: false,
        }));
        Ok(out)
    }

    fn kill(&self, pid: u32, signal: i32) -> Result<SignalOutcome, SysError> {
        let mut procs = lock(&self.procs);
        let Some(p) = procs.get(&pid) else { return Ok(SignalOutcome::NoSuchProcess) };
        lock(&self.signals).push((p.name.clone(), signal));
        if signal == libc::SIGKILL || (signal == libc::SIGTERM && !p.ignores_term) {
            procs.remove(&pid);
        }
        Ok(SignalOutcome::Sent)
    }

    fn own_pid(&self) -> u32 {
        1
    }
}
