//! `arcbox-agentctl exec`: a command in the guest, like `docker exec`.
//!
//! With `-t` the local terminal goes raw and the guest process gets a
//! terminal of the same size, resized on SIGWINCH; keys (Ctrl-C included)
//! go to the guest's terminal, which turns them into signals there. Without
//! `-t`, SIGINT, SIGTERM and SIGHUP received here are forwarded to the
//! guest process group. `-i` sends stdin. The guest's exit code becomes
//! agentctl's own (128 + N for a signal N); agentctl's own failures use
//! docker's codes: 125 (the agent failed or cannot be reached), 126 (the
//! command cannot be executed), 127 (the command was not found).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions, ExecEvent};
use arcbox_agent_wire::protocol::proto::agent::{ExecStartRequest, ExecStatus, ExecTerminal};
use arcbox_agent_wire::transport::Address;
use tokio::io::AsyncReadExt as _;
use tokio::signal::unix::{SignalKind, signal};

/// The arguments of `exec`.
#[derive(Debug, clap::Args)]
pub(super) struct ExecArgs {
    /// Send stdin to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (the local one goes raw).
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE), repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long)]
    cwd: Option<String>,
    /// User (name or uid, optionally :group).
    #[arg(short, long)]
    user: Option<String>,
    /// Kill the command (TERM, then KILL) after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Run inside this container of the guest's dockerd.
    #[arg(long)]
    container: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// docker's code for "the daemon (here: the agent) failed".
const FAILED: u8 = 125;
const CANNOT_EXECUTE: u8 = 126;
const NOT_FOUND: u8 = 127;

/// The local terminal in raw mode until dropped.
pub(super) struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    pub(super) fn enter(tty: bool) -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !tty || !stdin.is_terminal() {
            return Self(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else { return Self(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return Self(None);
        }
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

/// The local terminal's size (rows, columns), if stdout is one.
pub(super) fn window_size() -> Option<(u32, u32)> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills the winsize it is given.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_row > 0).then(|| (u32::from(size.ws_row), u32::from(size.ws_col)))
}

fn request(args: &ExecArgs) -> ExecStartRequest {
    let (user, group) = match args.user.as_deref().map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((user, group)) => (user.to_owned(), group.to_owned()),
        None => (String::new(), String::new()),
    };
    let terminal = args.tty.then(|| {
        let (rows, cols) = window_size().unwrap_or((24, 80));
        ExecTerminal { rows, cols, modes: Vec::new() }
    });
    let mut env = args.env.clone();
    if args.tty
        && let Ok(term) = std::env::var("TERM")
        && !env.iter().any(|e| e.starts_with("TERM="))
    {
        env.push(format!("TERM={term}"));
    }
    ExecStartRequest {
        argv: args.command.clone(),
        env,
        cwd: args.cwd.clone().unwrap_or_default(),
        user,
        group,
        terminal,
        stdin: args.interactive,
        timeout_ms: args.timeout.map_or(0, |s| (s * 1000.0).clamp(1.0, f64::from(u32::MAX)) as u32),
        container: args.container.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// The exit code a finished exec gives agentctl.
pub(super) fn exit_code(status: &ExecStatus) -> u8 {
    if status.signal > 0 {
        (128 + status.signal).clamp(0, 255) as u8
    } else {
        status.exit_code.clamp(0, 255) as u8
    }
}

/// Runs the command; the returned code is agentctl's exit code.
pub(super) async fn run(address: &Address, options: ConnectOptions, args: &ExecArgs) -> u8 {
    match exec(address, options, args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("arcbox-agentctl exec: {err}");
            match err.code() {
                Some(404) if args.container.is_none() => NOT_FOUND,
                Some(403) => CANNOT_EXECUTE,
                _ => FAILED,
            }
        }
    }
}

async fn exec(address: &Address, options: ConnectOptions, args: &ExecArgs) -> Result<u8, ClientError> {
    // A session has no call deadline: the command runs as long as it runs.
    let mut client = AgentClient::connect(address, options.clone()).await?;
    let mut session = client.exec_run(request(args), 0).await?;
    let exec_id = session.exec_id.clone();
    let raw = RawTerminal::enter(args.tty);
    let mut control = Control { address: address.clone(), options, client: None, exec_id };

    if args.interactive {
        let stdin = session.stdin();
        tokio::spawn(async move {
            let mut local = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match local.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdin.write(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stdin.close().await;
        });
    }
    let mut winch = signal(SignalKind::window_change()).ok();
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    let mut hangup = signal(SignalKind::hangup()).ok();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let status = loop {
        tokio::select! {
            event = session.next_event() => match event? {
                Some(ExecEvent::Output { stream: 2, data, .. }) => {
                    let _ = stderr.write_all(&data);
                    let _ = stderr.flush();
                }
                Some(ExecEvent::Output { data, .. }) => {
                    let _ = stdout.write_all(&data);
                    let _ = stdout.flush();
                }
                Some(ExecEvent::Gap { stream, from, to }) => {
                    eprintln!("arcbox-agentctl exec: {} bytes of stream {stream} were dropped", to - from);
                }
                Some(ExecEvent::Exit(status)) => break status,
                None => return Err(ClientError::Disconnected),
            },
            Some(()) = recv(&mut winch) => {
                if let Some((rows, cols)) = window_size() {
                    control.resize(rows, cols).await;
                }
            }
            Some(()) = recv(&mut interrupt), if !args.tty => control.signal(libc::SIGINT).await,
            Some(()) = recv(&mut terminate) => control.signal(libc::SIGTERM).await,
            Some(()) = recv(&mut hangup) => control.signal(libc::SIGHUP).await,
        }
    };
    drop(raw);
    if status.timed_out {
        eprintln!("arcbox-agentctl exec: timed out");
    }
    if status.oom_killed {
        eprintln!("arcbox-agentctl exec: killed by the OOM killer");
    }
    Ok(exit_code(&status))
}

pub(super) async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// A second connection for signals and resizes, made when first needed
/// (the session holds the first).
struct Control {
    address: Address,
    options: ConnectOptions,
    client: Option<AgentClient>,
    exec_id: String,
}

impl Control {
    async fn client(&mut self) -> Option<&mut AgentClient> {
        if self.client.is_none() {
            let options = ConnectOptions { call_timeout: Duration::from_secs(5), ..self.options.clone() };
            self.client = AgentClient::connect(&self.address, options).await.ok();
        }
        self.client.as_mut()
    }

    async fn signal(&mut self, signal: i32) {
        let id = self.exec_id.clone();
        if let Some(client) = self.client().await
            && let Err(err) = client.exec_signal(&id, signal, true).await
        {
            eprintln!("arcbox-agentctl exec: forwarding signal {signal}: {err}");
        }
    }

    async fn resize(&mut self, rows: u32, cols: u32) {
        let id = self.exec_id.clone();
        if let Some(client) = self.client().await {
            let _ = client.exec_resize(&id, rows, cols).await;
        }
    }
}
