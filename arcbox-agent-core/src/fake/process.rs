//! Fake processes that behave like processes: a child runs until it exits
//! on its own, is told to crash, or is signalled; a daemon opens its API
//! endpoints (and creates their socket files) once it is "ready", and
//! closes them when it dies. One table serves as both the
//! [`ProcessSpawner`] (for supervision, mkfs, udhcpc) and the
//! [`ProcessTable`] (for the ordered shutdown), so the real state
//! machines run over it: restarts, backoff, give-up, SIGTERM-then-SIGKILL.
//!
//! Programs are matched by their file name (`containerd`) or full path;
//! an unknown program exits 0 at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::{Endpoint, FakeEndpoints, FakeFiles};
use crate::sys::{
    ChildProcess, ExitStatus, ProcessEntry, ProcessSpawner, ProcessSpec, ProcessTable, SignalOutcome,
    SysError,
};

/// What a fake program does when started.
#[derive(Debug, Clone)]
pub struct FakeProgram {
    /// Exits on its own after this long with this status; `None` runs until signalled.
    exit: Option<(Duration, ExitStatus)>,
    /// Becomes ready (opens `serves`, writes `writes`) after this long.
    ready_after: Duration,
    /// API endpoints it serves once ready.
    serves: Vec<Endpoint>,
    /// Files it writes once ready (a kubeconfig).
    writes: Vec<(PathBuf, String)>,
    /// SIGTERM does not end it (SIGKILL always does).
    ignores_term: bool,
    /// The next this many runs crash before ready with the status, after the delay.
    crashes: u32,
    crash: (Duration, ExitStatus),
    /// The next this many runs die with the status this long after they are ready.
    deaths: u32,
    death: (Duration, ExitStatus),
}

impl FakeProgram {
    fn new(exit: Option<(Duration, ExitStatus)>) -> Self {
        Self {
            exit,
            ready_after: Duration::ZERO,
            serves: Vec::new(),
            writes: Vec::new(),
            ignores_term: false,
            crashes: 0,
            crash: (Duration::ZERO, ExitStatus::Code(1)),
            deaths: 0,
            death: (Duration::ZERO, ExitStatus::Code(1)),
        }
    }

    /// Exits with `status` at once (a tool such as mkfs).
    pub fn exits(status: ExitStatus) -> Self {
        Self::new(Some((Duration::ZERO, status)))
    }

    /// Runs until it is signalled (a daemon).
    pub fn daemon() -> Self {
        Self::new(None)
    }

    /// Exits on its own after `delay` instead of at once.
    pub fn after(mut self, delay: Duration) -> Self {
        if let Some((_, status)) = self.exit {
            self.exit = Some((delay, status));
        }
        self
    }

    /// Serves `endpoint` once ready.
    pub fn serves(mut self, endpoint: Endpoint) -> Self {
        self.serves.push(endpoint);
        self
    }

    /// Becomes ready `delay` after it starts.
    pub fn ready_after(mut self, delay: Duration) -> Self {
        self.ready_after = delay;
        self
    }

    /// Writes `contents` to `path` once ready.
    pub fn writes(mut self, path: impl Into<PathBuf>, contents: impl Into<String>) -> Self {
        self.writes.push((path.into(), contents.into()));
        self
    }

    /// Ignores SIGTERM.
    pub fn ignores_term(mut self) -> Self {
        self.ignores_term = true;
        self
    }

    /// Its next `runs` runs exit with `status` `after` they start, before ready.
    pub fn crashes_first(mut self, runs: u32, after: Duration, status: ExitStatus) -> Self {
        self.crashes = runs;
        self.crash = (after, status);
        self
    }

    /// Its next `runs` runs die with `status` `after` they became ready.
    pub fn dies_after_ready(mut self, runs: u32, after: Duration, status: ExitStatus) -> Self {
        self.deaths = runs;
        self.death = (after, status);
        self
    }
}

/// One running fake process.
struct Proc {
    name: String,
    ignores_term: bool,
    exit: watch::Sender<Option<ExitStatus>>,
    /// Endpoints it opened (closed when it dies).
    opened: Vec<Endpoint>,
}

#[derive(Default)]
struct State {
    next_pid: u32,
    procs: BTreeMap<u32, Proc>,
    /// (program name or path, first argument) -> behaviour.
    programs: HashMap<(String, Option<String>), FakeProgram>,
    spawned: Vec<ProcessSpec>,
    signals: Vec<(String, i32)>,
}

struct Shared {
    state: Mutex<State>,
    files: Arc<FakeFiles>,
    endpoints: Arc<FakeEndpoints>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends `pid` with `status`: closes its endpoints, wakes its waiters.
    fn end(&self, pid: u32, status: ExitStatus) {
        let Some(proc) = self.lock().procs.remove(&pid) else { return };
        for endpoint in &proc.opened {
            self.endpoints.close(endpoint);
        }
        proc.exit.send_replace(Some(status));
    }

    /// Makes a running `pid` ready: opens its endpoints, writes its files.
    fn make_ready(&self, pid: u32, program: &FakeProgram) {
        let mut state = self.lock();
        let Some(proc) = state.procs.get_mut(&pid) else { return };
        for (path, contents) in &program.writes {
            self.files.put(path.clone(), contents);
        }
        for endpoint in &program.serves {
            if let Endpoint::Unix(socket) = endpoint {
                self.files.put(socket.clone(), "");
            }
            self.endpoints.open(endpoint.clone());
            proc.opened.push(endpoint.clone());
        }
    }

    fn signal(&self, pid: u32, signal: i32) -> SignalOutcome {
        let end = {
            let mut state = self.lock();
            let Some(proc) = state.procs.get(&pid) else { return SignalOutcome::NoSuchProcess };
            let ends = signal == libc::SIGKILL || (signal == libc::SIGTERM && !proc.ignores_term);
            let name = proc.name.clone();
            state.signals.push((name, signal));
            ends
        };
        if end {
            self.end(pid, ExitStatus::Signal(signal));
        }
        SignalOutcome::Sent
    }
}

/// The fake process table: a spawner and a process table in one.
pub struct FakeProcesses {
    shared: Arc<Shared>,
}

impl Default for FakeProcesses {
    fn default() -> Self {
        Self::new(Arc::new(FakeFiles::new()), Arc::new(FakeEndpoints::default()))
    }
}

impl FakeProcesses {
    /// Processes whose daemons create their sockets in `files` and serve on `endpoints`.
    pub fn new(files: Arc<FakeFiles>, endpoints: Arc<FakeEndpoints>) -> Self {
        let state = State { next_pid: 1000, ..State::default() };
        Self { shared: Arc::new(Shared { state: Mutex::new(state), files, endpoints }) }
    }

    /// Starting `program` (a file name or a full path) will behave as `behaviour`.
    pub fn install(&self, program: impl Into<String>, behaviour: FakeProgram) {
        self.shared.lock().programs.insert((program.into(), None), behaviour);
    }

    /// Like [`FakeProcesses::install`], for runs whose first argument is `first_arg`.
    pub fn install_subcommand(&self, program: impl Into<String>, first_arg: &str, behaviour: FakeProgram) {
        self.shared.lock().programs.insert((program.into(), Some(first_arg.to_owned())), behaviour);
    }

    /// Children of `program` will exit with `status` at once.
    pub fn script_exit(&self, program: impl Into<PathBuf>, status: ExitStatus) {
        let program = program.into().display().to_string();
        self.install(program, FakeProgram::exits(status));
    }

    /// Adds a process that was running before (not started through the spawner).
    pub fn add(&self, pid: u32, name: &str, ignores_term: bool) {
        let (exit, _) = watch::channel(None);
        let proc = Proc { name: name.to_owned(), ignores_term, exit, opened: Vec::new() };
        self.shared.lock().procs.insert(pid, proc);
    }

    /// Every spec spawned so far.
    pub fn spawned(&self) -> Vec<ProcessSpec> {
        self.shared.lock().spawned.clone()
    }

    /// Signals sent so far, as (process name, signal).
    pub fn signals(&self) -> Vec<(String, i32)> {
        self.shared.lock().signals.clone()
    }

    /// Pids of the running processes named `name`.
    pub fn running(&self, name: &str) -> Vec<u32> {
        self.shared.lock().procs.iter().filter(|(_, p)| p.name == name).map(|(pid, _)| *pid).collect()
    }

    /// Makes `pid` exit with `status` now (a crash, an OOM kill).
    pub fn crash(&self, pid: u32, status: ExitStatus) {
        self.shared.end(pid, status);
    }

    /// The behaviour for `spec`, consuming one of its scripted crashes.
    fn behaviour(&self, spec: &ProcessSpec) -> FakeProgram {
        let mut state = self.shared.lock();
        let path = spec.program.display().to_string();
        let name = file_name(&spec.program);
        let first = spec.args.first().cloned();
        let keys = [(path.clone(), first.clone()), (name.clone(), first), (path, None), (name, None)];
        let Some(key) = keys.into_iter().find(|k| state.programs.contains_key(k)) else {
            return FakeProgram::exits(ExitStatus::Code(0));
        };
        let Some(program) = state.programs.get_mut(&key) else {
            return FakeProgram::exits(ExitStatus::Code(0));
        };
        if program.crashes > 0 {
            program.crashes -= 1;
            return FakeProgram {
                exit: Some(program.crash),
                serves: Vec::new(),
                writes: Vec::new(),
                ..program.clone()
            };
        }
        if program.deaths > 0 {
            program.deaths -= 1;
            let (after, status) = program.death;
            return FakeProgram { exit: Some((program.ready_after + after, status)), ..program.clone() };
        }
        program.clone()
    }
}

fn file_name(program: &Path) -> String {
    program.file_name().map_or_else(|| program.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// A child of the fake table.
struct FakeChild {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl ChildProcess for FakeChild {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait(&mut self) -> Result<ExitStatus, SysError> {
        let status = self
            .exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| SysError::Unsupported("a lost fake process"))?;
        status.ok_or(SysError::Unsupported("a fake process without a status"))
    }

    fn signal(&self, signal: i32) -> Result<(), SysError> {
        self.shared.signal(self.pid, signal);
        Ok(())
    }
}

#[async_trait::async_trait]
impl ProcessSpawner for FakeProcesses {
    async fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn ChildProcess>, SysError> {
        let program = self.behaviour(spec);
        let (exit, receiver) = watch::channel(None);
        let pid = {
            let mut state = self.shared.lock();
            state.spawned.push(spec.clone());
            state.next_pid += 1;
            let pid = state.next_pid;
            let proc = Proc {
                name: file_name(&spec.program),
                ignores_term: program.ignores_term,
                exit,
                opened: Vec::new(),
            };
            state.procs.insert(pid, proc);
            pid
        };
        let shared = Arc::clone(&self.shared);
        let mut killed = receiver.clone();
        tokio::spawn(async move {
            let life = async {
                let becomes_ready = !program.serves.is_empty() || !program.writes.is_empty();
                let exits_first = program.exit.is_some_and(|(after, _)| after < program.ready_after);
                if becomes_ready && !exits_first {
                    tokio::time::sleep(program.ready_after).await;
                    shared.make_ready(pid, &program);
                }
                match program.exit {
                    Some((after, status)) => {
                        let elapsed =
                            if becomes_ready && !exits_first { program.ready_after } else { Duration::ZERO };
                        tokio::time::sleep(after.saturating_sub(elapsed)).await;
                        shared.end(pid, status);
                    }
                    None => std::future::pending().await,
                }
            };
            // A signal that ends the process ends its life too.
            tokio::select! {
                () = life => {}
                _ = killed.wait_for(Option::is_some) => {}
            }
        });
        Ok(Box::new(FakeChild { pid, exit: receiver, shared: Arc::clone(&self.shared) }))
    }
}

impl ProcessTable for FakeProcesses {
    fn processes(&self) -> Result<Vec<ProcessEntry>, SysError> {
        let own = ProcessEntry {
            pid: 1,
            ppid: 0,
            name: "arcbox-agent".into(),
            kernel_thread: false,
            zombie: false,
        };
        let state = self.shared.lock();
        let others = state.procs.iter().map(|(pid, p)| ProcessEntry {
            pid: *pid,
            ppid: 1,
            name: p.name.clone(),
            kernel_thread: false,
            zombie: false,
        });
        Ok(std::iter::once(own).chain(others).collect())
    }

    fn kill(&self, pid: u32, signal: i32) -> Result<SignalOutcome, SysError> {
        Ok(self.shared.signal(pid, signal))
    }

    fn own_pid(&self) -> u32 {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::FileOps as _;

    fn spec(program: &str) -> ProcessSpec {
        ProcessSpec { program: program.into(), ..ProcessSpec::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_daemon_serves_after_its_delay_and_stops_serving_when_killed() {
        let files = Arc::new(FakeFiles::new());
        let endpoints = Arc::new(FakeEndpoints::default());
        let procs = FakeProcesses::new(Arc::clone(&files), Arc::clone(&endpoints));
        let socket = Endpoint::Unix("/run/d.sock".into());
        procs.install(
            "d",
            FakeProgram::daemon().serves(socket.clone()).ready_after(Duration::from_millis(100)),
        );
        let mut child = procs.spawn(&spec("/bin/d")).await.unwrap();
        assert!(!endpoints.is_open(&socket));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(endpoints.is_open(&socket) && files.exists(Path::new("/run/d.sock")));
        assert_eq!(procs.running("d"), [child.pid()]);
        child.signal(libc::SIGTERM).unwrap();
        assert_eq!(child.wait().await.unwrap(), ExitStatus::Signal(libc::SIGTERM));
        assert!(!endpoints.is_open(&socket));
        assert!(procs.running("d").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_crashes_come_first_then_the_program_behaves() {
        let procs = FakeProcesses::default();
        procs.install(
            "d",
            FakeProgram::daemon().crashes_first(2, Duration::from_millis(10), ExitStatus::Code(3)),
        );
        for _ in 0..2 {
            let mut child = procs.spawn(&spec("d")).await.unwrap();
            assert_eq!(child.wait().await.unwrap(), ExitStatus::Code(3));
        }
        let child = procs.spawn(&spec("d")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(procs.running("d"), [child.pid()]);
    }

    #[tokio::test]
    async fn a_process_that_ignores_sigterm_dies_of_sigkill_and_unknown_programs_exit_0() {
        let procs = FakeProcesses::default();
        procs.install("stubborn", FakeProgram::daemon().ignores_term());
        let mut child = procs.spawn(&spec("stubborn")).await.unwrap();
        assert_eq!(procs.kill(child.pid(), libc::SIGTERM).unwrap(), SignalOutcome::Sent);
        assert_eq!(procs.running("stubborn").len(), 1);
        procs.kill(child.pid(), libc::SIGKILL).unwrap();
        assert_eq!(child.wait().await.unwrap(), ExitStatus::Signal(libc::SIGKILL));
        assert_eq!(procs.kill(child.pid(), libc::SIGTERM).unwrap(), SignalOutcome::NoSuchProcess);
        let mut tool = procs.spawn(&spec("/sbin/whatever")).await.unwrap();
        assert_eq!(tool.wait().await.unwrap(), ExitStatus::Code(0));
    }
}
