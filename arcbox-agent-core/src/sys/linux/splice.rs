//! Zero-copy relaying between two Unix stream sockets: splice(2) moves the
//! bytes socket -> pipe -> socket inside the kernel, so a proxy hop costs
//! no user-space copies. Half-close is propagated as in the copy relay.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Bytes moved per splice call (the pipe is sized to it when possible).
const SPLICE_CHUNK_BYTES: usize = 1 << 20;

/// Relays both directions between `a` and `b` until each has reached EOF;
/// returns (bytes a -> b, bytes b -> a).
pub async fn splice_relay(a: &UnixStream, b: &UnixStream) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // A bigger pipe means fewer round trips; the default (64 KiB) works too.
    let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(SPLICE_CHUNK_BYTES as i32));
    Ok((read, write))
}

async fn one_way(from: &UnixStream, to: &UnixStream) -> io::Result<u64> {
    let (pipe_read, pipe_write) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let filled = match from.try_io(Interest::READABLE, || {
            splice(from.as_fd(), None, pipe_write.as_fd(), None, SPLICE_CHUNK_BYTES, flags)
                .map_err(io::Error::from)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if filled == 0 {
            // EOF from `from`: pass the half-close on; the other direction goes on.
            nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write)
                .or_else(|e| if e == nix::errno::Errno::ENOTCONN { Ok(()) } else { Err(e) })
                .map_err(io::Error::from)?;
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_read.as_fd(), None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
    }
}
