//! `arcbox-agentctl fs`: the guest's files through the confined file
//! requests, every path resolved inside `--root` (default `/`).

use std::io::{Read as _, Write as _};

use arcbox_agent_wire::client::{AgentClient, ClientError};
use arcbox_agent_wire::protocol::proto::agent::{
    FileListRequest, FileMkdirRequest, FileReadRequest, FileRemoveRequest, FileStatRequest, FileWriteRequest,
};
use clap::Subcommand;

use super::{Exit, Output, text};

/// What to do with the guest's files.
#[derive(Debug, Subcommand)]
pub(super) enum FsAction {
    /// Print a file to stdout (read in chunks to the end).
    Cat { path: String },
    /// Replace a file with stdin, atomically.
    Put {
        path: String,
        /// Permission bits, octal (default 644).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
        /// Create missing parent directories.
        #[arg(short, long)]
        parents: bool,
    },
    /// Show a path's metadata (a final symlink is not followed).
    Stat { path: String },
    /// List a directory.
    Ls { path: String },
    /// Make a directory.
    Mkdir {
        path: String,
        /// Create missing parents; an existing directory is fine.
        #[arg(short, long)]
        parents: bool,
    },
    /// Remove a file, a symlink or an empty directory (`-r`: a whole tree).
    Rm {
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{text:?} is not an octal mode"))
}

/// Runs `action` under `root`.
pub(super) async fn run(
    client: &mut AgentClient,
    out: &Output,
    root: &str,
    action: &FsAction,
) -> Result<Exit, ClientError> {
    let root = root.to_owned();
    match action {
        FsAction::Cat { path } => cat(client, root, path).await,
        FsAction::Put { path, mode, parents } => {
            let mut data = Vec::new();
            if let Err(err) = std::io::stdin().read_to_end(&mut data) {
                eprintln!("arcbox-agentctl: reading stdin: {err}");
                return Ok(Exit::Failed);
            }
            let request = FileWriteRequest {
                root,
                path: path.clone(),
                data,
                mode: mode.unwrap_or(0),
                create_parents: *parents,
            };
            let r = client.file_write(request).await?;
            out.emit(&r, || format!("{} bytes written to {path}", r.bytes_written));
            Ok(Exit::Success)
        }
        FsAction::Stat { path } => {
            let r = client.file_stat(FileStatRequest { root, path: path.clone() }).await?;
            out.emit(&r, || r.info.as_ref().map(text::file_stat).unwrap_or_default());
            Ok(Exit::Success)
        }
        FsAction::Ls { path } => {
            let r = client.file_list(FileListRequest { root, path: path.clone(), max_entries: 0 }).await?;
            out.emit(&r, || text::file_list(&r));
            Ok(Exit::Success)
        }
        FsAction::Mkdir { path, parents } => {
            let request = FileMkdirRequest { root, path: path.clone(), mode: 0, parents: *parents };
            let r = client.file_mkdir(request).await?;
            out.emit(&r, || if r.created { format!("made {path}") } else { format!("{path} exists") });
            Ok(Exit::Success)
        }
        FsAction::Rm { path, recursive } => {
            let request = FileRemoveRequest { root, path: path.clone(), recursive: *recursive };
            let r = client.file_remove(request).await?;
            out.emit(
                &r,
                || if r.removed { format!("removed {path}") } else { format!("{path} was not there") },
            );
            Ok(Exit::Success)
        }
    }
}

/// Reads `path` to its end, chunk by chunk (each at most the agent's read
/// limit), straight to stdout.
async fn cat(client: &mut AgentClient, root: String, path: &str) -> Result<Exit, ClientError> {
    let mut stdout = std::io::stdout().lock();
    let mut offset = 0;
    loop {
        let request = FileReadRequest { root: root.clone(), path: path.to_owned(), offset, length: 0 };
        let chunk = client.file_read(request).await?;
        if stdout.write_all(&chunk.data).is_err() {
            // A closed stdout (piped to `head`) ends the copy quietly.
            return Ok(Exit::Success);
        }
        offset += chunk.bytes_read;
        if chunk.eof || chunk.bytes_read == 0 {
            let _ = stdout.flush();
            return Ok(Exit::Success);
        }
    }
}
