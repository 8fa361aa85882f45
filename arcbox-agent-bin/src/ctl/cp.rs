//! `arcbox-agentctl cp SRC DST`, like `docker cp`: one side is `guest:PATH`
//! (inside `--root`), the other a host path or `-` (a tar archive on stdin
//! or stdout). The host side packs and unpacks with the tar crate on a
//! blocking thread, joined to the copy session by an in-memory pipe, so
//! neither side holds the archive.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use arcbox_agent_wire::client::{AgentClient, ClientError};
use arcbox_agent_wire::protocol::proto::agent::{CopyInRequest, CopyOutRequest, CopyResult};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::runtime::Handle;

use super::{Exit, Output};

/// The pipe between the session and the host's tar code.
const PIPE_BYTES: usize = 1 << 20;

/// Arguments of `cp`.
#[derive(Debug, clap::Args)]
pub(super) struct CpArgs {
    /// `guest:PATH`, a host path, or `-` (a tar archive on stdin).
    src: String,
    /// `guest:PATH`, a host path, or `-` (a tar archive to stdout).
    dst: String,
    /// Follow a final symlink of the source (packs its target).
    #[arg(short = 'L', long)]
    follow_link: bool,
    /// Keep the archive's owners (uid/gid) in the guest.
    #[arg(short, long)]
    archive: bool,
    /// The guest directory paths are confined to.
    #[arg(long, default_value = "/")]
    root: String,
}

pub(super) async fn run(client: &mut AgentClient, out: &Output, args: &CpArgs) -> Result<Exit, ClientError> {
    let result = match (args.src.strip_prefix("guest:"), args.dst.strip_prefix("guest:")) {
        (Some(_), Some(_)) | (None, None) => {
            eprintln!("arcbox-agentctl cp: exactly one of SRC and DST is guest:PATH");
            return Ok(Exit::Usage);
        }
        (None, Some(dst)) => copy_in(client, args, dst).await?,
        (Some(src), None) => copy_out(client, args, src).await?,
    };
    if args.dst != "-" {
        out.emit(&result, || format!("{} entries, {} bytes of files", result.entries, result.file_bytes));
    }
    Ok(Exit::Success)
}

async fn copy_in(client: &mut AgentClient, args: &CpArgs, dst: &str) -> Result<CopyResult, ClientError> {
    let mut request = CopyInRequest {
        root: args.root.clone(),
        path: dst.to_owned(),
        follow_symlink: true,
        preserve_owner: args.archive,
        ..Default::default()
    };
    if args.src == "-" {
        request.into_dir = true;
        return client.copy_in(request, tokio::io::stdin()).await;
    }
    let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
    let (src, follow) = (PathBuf::from(&args.src), args.follow_link);
    let handle = Handle::current();
    let packer =
        tokio::task::spawn_blocking(move || pack(&src, follow, BlockingPipe { handle, pipe: writer }));
    let copied = client.copy_in(request, reader).await;
    let packed = packer.await.map_err(|e| ClientError::Local(io::Error::other(e)))?;
    let result = copied?;
    packed.map_err(ClientError::Local)?;
    Ok(result)
}

async fn copy_out(client: &mut AgentClient, args: &CpArgs, src: &str) -> Result<CopyResult, ClientError> {
    let request = CopyOutRequest {
        root: args.root.clone(),
        path: src.to_owned(),
        follow_symlink: args.follow_link,
        ..Default::default()
    };
    if args.dst == "-" {
        return client.copy_out(request, tokio::io::stdout()).await;
    }
    let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
    let dst = PathBuf::from(&args.dst);
    let handle = Handle::current();
    let unpacker = tokio::task::spawn_blocking(move || unpack(&dst, BlockingPipe { handle, pipe: reader }));
    let mut writer = writer;
    let copied = client.copy_out(request, &mut writer).await;
    let _ = writer.shutdown().await;
    drop(writer);
    let unpacked = unpacker.await.map_err(|e| ClientError::Local(io::Error::other(e)))?;
    let result = copied?;
    unpacked.map_err(ClientError::Local)?;
    Ok(result)
}

/// Packs `src` under its own name (a directory's contents for `dir/.`).
fn pack(src: &Path, follow: bool, sink: BlockingPipe) -> io::Result<()> {
    let mut builder = tar::Builder::new(sink);
    builder.follow_symlinks(follow);
    let name = src.file_name().map_or_else(|| PathBuf::from("."), PathBuf::from);
    let meta = if follow { std::fs::metadata(src)? } else { std::fs::symlink_metadata(src)? };
    if meta.is_dir() {
        builder.append_dir_all(&name, src)?;
    } else {
        builder.append_path_with_name(src, &name)?;
    }
    builder.into_inner()?.flush()
}

/// Unpacks the archive at `dst` with docker cp semantics: into an existing
/// directory, or under the name `dst` (through a sibling staging directory
/// renamed at the end, so a failed copy leaves nothing at `dst`).
fn unpack(dst: &Path, source: BlockingPipe) -> io::Result<()> {
    let mut archive = tar::Archive::new(source);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    if dst.is_dir() {
        return unpack_into(&mut archive, dst);
    }
    let parent = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new().prefix(".arcbox-cp.").tempdir_in(parent)?;
    unpack_into(&mut archive, staging.path())?;
    let mut tops = std::fs::read_dir(staging.path())?.collect::<Result<Vec<_>, _>>()?;
    match tops.pop() {
        Some(top) if tops.is_empty() => std::fs::rename(top.path(), dst),
        _ => {
            Err(io::Error::other("the archive has no single top-level name; copy into an existing directory"))
        }
    }
}

/// Unpacks into `dir` as `tar::Archive::unpack` does (directories after
/// the rest, deepest first, so a read-only one can still be filled), then
/// gives each directory its archive mtime: the tar crate leaves it at the
/// time its entries were written, and `docker cp` keeps it.
fn unpack_into<R: Read>(archive: &mut tar::Archive<R>, dir: &Path) -> io::Result<()> {
    let mut dirs = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_dir() {
            dirs.push(entry);
        } else {
            entry.unpack_in(dir)?;
        }
    }
    dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut entry in dirs {
        let mtime = entry.header().mtime()?;
        let path = dir.join(entry.path()?);
        // false: a name the tar crate refused to place (`..`); nothing made.
        if entry.unpack_in(dir)? {
            let at = |secs| nix::sys::time::TimeSpec::new(secs, 0);
            let mtime = at(i64::try_from(mtime).unwrap_or(i64::MAX) as _);
            let omit = nix::sys::time::TimeSpec::UTIME_OMIT;
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &omit,
                &mtime,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io::Error::from)?;
        }
    }
    Ok(())
}

/// One end of the in-memory pipe, read or written from a blocking thread.
struct BlockingPipe {
    handle: Handle,
    pipe: DuplexStream,
}

impl Read for BlockingPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.handle.block_on(self.pipe.read(buf))
    }
}

impl Write for BlockingPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.handle.block_on(self.pipe.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.handle.block_on(self.pipe.shutdown())
    }
}
