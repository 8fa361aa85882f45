//! The file requests: read, write (atomic replace), stat, list, mkdir,
//! remove and the copy sessions (`copy.rs`), each confined to a root directory the host names (see
//! [`crate::sys::ConfinedFs`]), and the reference's MmapReadFile, served as
//! a confined read under `/` capped by the read limit. The operations are
//! syscalls, so they run on the blocking pool, never on the async workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::WhileThawed;
use super::copy::{CopyIn, CopyOut};
use crate::protocol::proto::agent::{
    FileInfo, FileListRequest, FileListResponse, FileMkdirRequest, FileMkdirResponse, FileReadRequest,
    FileReadResponse, FileRemoveRequest, FileRemoveResponse, FileStatRequest, FileStatResponse,
    FileWriteRequest, FileWriteResponse, MmapReadFileRequest, MmapReadFileResponse,
};
use crate::protocol::{ErrorCode, MessageType};
use crate::quiesce::FreezeGate;
use crate::rpc::{RequestContext, Router, RpcError, UnaryHandler};
use crate::sys::{ConfinedError, ConfinedFs, FileKind, FileStat, ReadResult};

/// Mode of a written file when the request says 0.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of a new directory when the request says 0.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// Registers the file requests, the copy sessions and MmapReadFile on `router`.
pub fn register_files<F: ConfinedFs>(router: &mut Router, files: Arc<F>) {
    register_files_guarded(router, files, &FreezeGate::default());
}

/// As [`register_files`], with the writes (write, mkdir, remove, copy in)
/// refused while `frozen` says the filesystems are frozen; reads go on.
pub fn register_files_guarded<F: ConfinedFs>(router: &mut Router, files: Arc<F>, frozen: &FreezeGate) {
    router
        .unary(MessageType::FileReadRequest, Read(Arc::clone(&files)))
        .unary(MessageType::FileWriteRequest, WhileThawed::new(frozen, Write(Arc::clone(&files))))
        .unary(MessageType::FileStatRequest, Stat(Arc::clone(&files)))
        .unary(MessageType::FileListRequest, List(Arc::clone(&files)))
        .unary(MessageType::FileMkdirRequest, WhileThawed::new(frozen, Mkdir(Arc::clone(&files))))
        .unary(MessageType::FileRemoveRequest, WhileThawed::new(frozen, Remove(Arc::clone(&files))))
        .session(MessageType::CopyInRequest, WhileThawed::new(frozen, CopyIn(Arc::clone(&files))))
        .session(MessageType::CopyOutRequest, CopyOut(Arc::clone(&files)))
        .unary(MessageType::MmapReadFileRequest, MmapRead(files));
}

/// The host's root: absolute, `/` when empty.
pub(super) fn root_of(root: &str) -> Result<PathBuf, RpcError> {
    match root {
        "" => Ok(PathBuf::from("/")),
        root if Path::new(root).is_absolute() => Ok(PathBuf::from(root)),
        root => Err(RpcError::bad_request(format!("root {root:?} is not an absolute path"))),
    }
}

/// The wire code for a failed operation; the message keeps the errno.
fn rpc_error(err: ConfinedError) -> RpcError {
    RpcError::new(error_code(&err), format!("{err} (errno {})", err.errno()))
}

/// The wire code for a failed confined operation.
pub(super) fn error_code(err: &ConfinedError) -> i32 {
    match err {
        ConfinedError::NotFound { .. } => ErrorCode::NOT_FOUND,
        ConfinedError::Root { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            ErrorCode::NOT_FOUND
        }
        ConfinedError::Escapes { .. } | ConfinedError::InvalidPath { .. } => ErrorCode::BAD_REQUEST,
        ConfinedError::NotADirectory { .. }
        | ConfinedError::IsADirectory { .. }
        | ConfinedError::NotRegularFile { .. }
        | ConfinedError::NotEmpty { .. }
        | ConfinedError::MountPoint { .. } => ErrorCode::CONFLICT,
        ConfinedError::TooLarge { .. } => ErrorCode::PAYLOAD_TOO_LARGE,
        ConfinedError::Unsupported(_) => ErrorCode::NOT_IMPLEMENTED,
        ConfinedError::Root { .. } | ConfinedError::Io { .. } => ErrorCode::INTERNAL,
    }
}

/// Runs `op` on the blocking pool with the request's root.
async fn blocking<F: ConfinedFs, T: Send + 'static>(
    files: &Arc<F>,
    root: &str,
    op: impl FnOnce(&F, &Path) -> Result<T, ConfinedError> + Send + 'static,
) -> Result<T, RpcError> {
    let (files, root) = (Arc::clone(files), root_of(root)?);
    tokio::task::spawn_blocking(move || op(&files, &root))
        .await
        .map_err(|e| RpcError::internal(format!("file operation panicked: {e}")))?
        .map_err(rpc_error)
}

/// Reads `length` bytes (0: as many as allowed) at `offset`, never more
/// than the read limit: a larger request gets the limit's worth, and the
/// host reads on from `offset + bytes_read`.
async fn capped_read<F: ConfinedFs>(
    files: &Arc<F>,
    root: &str,
    path: String,
    offset: u64,
    length: u64,
) -> Result<ReadResult, RpcError> {
    let length = if length == 0 { u64::MAX } else { length };
    blocking(files, root, move |fs, root| {
        fs.read(root, Path::new(&path), offset, length.min(fs.limits().max_read_bytes))
    })
    .await
}

/// `stat` as the wire shows it, named `name`.
pub fn file_info(name: String, stat: &FileStat) -> FileInfo {
    let mtime =
        stat.mtime.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    FileInfo {
        name,
        kind: match stat.kind {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        }
        .to_owned(),
        size: stat.size,
        mode: stat.mode,
        uid: stat.uid,
        gid: stat.gid,
        mtime_unix_nanos: mtime,
        symlink_target: stat
            .symlink_target
            .as_ref()
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

struct Read<F>(Arc<F>);

impl<F: ConfinedFs> UnaryHandler for Read<F> {
    type Request = FileReadRequest;
    type Response = FileReadResponse;

    async fn handle(&self, _: RequestContext<'_>, r: FileReadRequest) -> Result<FileReadResponse, RpcError> {
        let read = capped_read(&self.0, &r.root, r.path, r.offset, r.length).await?;
        Ok(FileReadResponse { bytes_read: read.bytes_read, size: read.size, eof: read.eof, data: read.data })
    }
}

struct Write<F>(Arc<F>);

impl<F: ConfinedFs> UnaryHandler for Write<F> {
    type Request = FileWriteRequest;
    type Response = FileWriteResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        r: FileWriteRequest,
    ) -> Result<FileWriteResponse, RpcError> {
        let mode = if r.mode == 0 { DEFAULT_FILE_MODE } else { r.mode & 0o7777 };
        let path = PathBuf::from(&r.path);
        let bytes_written = blocking(&self.0, &r.root, move |fs, root| {
            fs.write_atomic(root, &path, &mut r.data.as_slice(), mode, r.create_parents)
        })
        .await?;
        tracing::info!(root = r.root, path = r.path, bytes_written, "file written");
        Ok(FileWriteResponse { bytes_written })
    }
}

struct Stat<F>(Arc<F>);

impl<F: ConfinedFs> UnaryHandler for Stat<F> {
    type Request = FileStatRequest;
    type Response = FileStatResponse;

    async fn handle(&self, _: RequestContext<'_>, r: FileStatRequest) -> Result<FileStatResponse, RpcError> {
        let path = r.path.clone();
        let stat = blocking(&self.0, &r.root, move |fs, root| fs.stat(root, Path::new(&r.path))).await?;
        Ok(FileStatResponse { info: Some(file_info(path, &stat)) })
    }
}

struct List<F>(Arc<F>);

impl<F: ConfinedFs> UnaryHandler for List<F> {
    type Request = FileListRequest;
    type Response = FileListResponse;

    async fn handle(&self, _: RequestContext<'_>, r: FileListRequest) -> Result<FileListResponse, RpcError> {
        let max = if r.max_entries == 0 { usize::MAX } else { r.max_entries as usize };
        let listing =
            blocking(&self.0, &r.root, move |fs, root| fs.list(root, Path::new(&r.path), max)).await?;
        let entries = listing
            .entries
            .iter()
            .map(|e| {
                let stat = FileStat {
                    kind: e.kind,
                    size: e.size,
                    mode: e.mode,
                    uid: 0,
                    gid: 0,
                    mtime: e.mtime,
                    symlink_target: None,
                };
                file_info(e.name.to_string_lossy().into_owned(), &stat)
            })
            .collect();
        Ok(FileListResponse { entries, truncated: listing.truncated })
    }
}

struct Mkdir<F>(Arc<F>);

impl<F: ConfinedFs> UnaryHandler for Mkdir<F> {
    type Request = FileMkdirRequest;
    type Response = FileMkdirResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        r: FileMkdirRequest,
    ) -> Result<FileMkdirResponse, RpcError> {
        let mode = if r.mode == 0 { DEFAULT_DIR_MODE } else { r.mode & 0o7777 };
        let created =
            blocking(&self.0, &r.root, move |fs, root| fs.mkdir(root, Path::new(&r.path), mode, r.parents))
                .await?;
        Ok(FileMkdirResponse { created })
    }
}

struct Remove<F>(Arc<F>);

impl<F: ConfinedFs> UnaryHandler for Remove<F> {
    type Request = FileRemoveRequest;
    type Response = FileRemoveResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        r: FileRemoveRequest,
    ) -> Result<FileRemoveResponse, RpcError> {
        let (root, path) = (r.root.clone(), r.path.clone());
        let removed =
            blocking(&self.0, &r.root, move |fs, root| fs.remove(root, Path::new(&r.path), r.recursive))
                .await?;
        tracing::info!(root, path, removed, recursive = r.recursive, "file removed");
        Ok(FileRemoveResponse { removed })
    }
}

/// The reference's MmapReadFile: `path` under `/`, `length` 0 meaning to
/// the end, capped by the read limit (the reference capped at 64 MiB; our
/// cap keeps the answer inside one frame).
struct MmapRead<F>(Arc<F>);

impl<F: ConfinedFs> UnaryHandler for MmapRead<F> {
    type Request = MmapReadFileRequest;
    type Response = MmapReadFileResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        r: MmapReadFileRequest,
    ) -> Result<MmapReadFileResponse, RpcError> {
        let read = capped_read(&self.0, "/", r.path, r.offset, r.length).await?;
        Ok(MmapReadFileResponse { bytes_read: read.bytes_read, data: read.data })
    }
}
