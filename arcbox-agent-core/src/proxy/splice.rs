//! Kernel-side relaying between two connected stream sockets (Unix, TCP,
//! vsock): bulk data moves socket -> pipe -> socket by splice(2), so a
//! proxy hop costs no user-space copies (between Unix sockets no copies at
//! all; from a vsock one kernel copy instead of two through user space),
//! while small messages take one plain read and write, which is cheaper
//! for them. Half-close is propagated as in the copy relay, and a socket
//! that refuses splice falls back to copying.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Bytes moved per splice call; the pipe is sized to it when the kernel
/// allows (root may; others keep the default 64 KiB, which works too).
const SPLICE_CHUNK_BYTES: usize = 1 << 20;

/// The first read of every wake-up: most API requests and answers fit.
const FIRST_READ_BYTES: usize = 16 * 1024;

/// Buffer of the copying mover.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// How one direction moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mover {
    /// A read for small messages, splice(2) through a pipe for bulk (the default).
    Splice,
    /// read(2)/write(2) through a bounded buffer.
    Copy,
}

/// Relays both directions between the sockets `a` and `b` (non-blocking,
/// connected) until each has reached EOF; returns (bytes a -> b, bytes b -> a).
pub async fn relay_sockets(a: OwnedFd, b: OwnedFd, mover: Mover) -> io::Result<(u64, u64)> {
    let (a, b) = (register(a)?, register(b)?);
    tokio::try_join!(one_way(&a, &b, mover), one_way(&b, &a, mover))
}

fn register(socket: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd stays open, and the same descriptor, until the
    // AsyncFd that owns it is dropped.
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|e| e.into_parts().1)
}

async fn one_way(from: &AsyncFd<OwnedFd>, to: &AsyncFd<OwnedFd>, mover: Mover) -> io::Result<u64> {
    let mut stage = Stage::new(mover)?;
    let mut total = 0u64;
    loop {
        let staged = stage.fill(from).await?;
        if staged.len() == 0 {
            // EOF from `from`: pass the half-close on; the other direction goes on.
            return match nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write) {
                Ok(()) | Err(Errno::ENOTCONN) => Ok(total),
                Err(e) => Err(e.into()),
            };
        }
        stage.drain(to, staged).await?;
        total += staged.len() as u64;
    }
}

/// Where the bytes of one fill wait: in the buffer or in the pipe.
#[derive(Debug, Clone, Copy)]
enum Staged {
    Buffer(usize),
    Pipe(usize),
}

impl Staged {
    fn len(self) -> usize {
        match self {
            Staged::Buffer(n) | Staged::Pipe(n) => n,
        }
    }
}

/// One direction's staging area. Every wake-up starts with a plain read
/// into `buf`: a short read means the socket is drained, so readiness is
/// cleared without a probe, and a small message costs one read and one
/// write. A full read means bulk data is flowing: the direction then
/// splices through `pipe` until the socket runs dry.
struct Stage {
    buf: Box<[u8]>,
    /// None when copying only.
    pipe: Option<Pipe>,
    bulk: bool,
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Stage {
    fn new(mover: Mover) -> io::Result<Self> {
        let (buf_bytes, pipe) = match mover {
            Mover::Splice => {
                let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
                let size = nix::fcntl::FcntlArg::F_SETPIPE_SZ(SPLICE_CHUNK_BYTES as i32);
                let _ = nix::fcntl::fcntl(&write, size);
                (FIRST_READ_BYTES, Some(Pipe { read, write }))
            }
            Mover::Copy => (COPY_BUFFER_BYTES, None),
        };
        Ok(Stage { buf: vec![0; buf_bytes].into_boxed_slice(), pipe, bulk: false })
    }

    /// Waits for bytes from `from` and stages them; a length of 0 is EOF.
    async fn fill(&mut self, from: &AsyncFd<OwnedFd>) -> io::Result<Staged> {
        loop {
            let mut ready = from.readable().await?;
            if let (true, Some(pipe)) = (self.bulk, &self.pipe) {
                let spliced = ready.try_io(|fd| {
                    let moved = splice(fd.as_fd(), None, pipe.write.as_fd(), None, SPLICE_CHUNK_BYTES, FLAGS);
                    moved.map_err(io::Error::from)
                });
                match spliced {
                    // No readiness shortcut on a short splice: it also stops
                    // when the pipe runs out of slots, with data still queued.
                    Ok(Ok(n)) => return Ok(Staged::Pipe(n)),
                    Ok(Err(e)) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
                        tracing::debug!("splice refused for this socket; relaying by copying");
                        *self = Stage::new(Mover::Copy)?;
                    }
                    Ok(Err(e)) => return Err(e),
                    // Drained: the next wake-up starts with a read again.
                    Err(_would_block) => self.bulk = false,
                }
                continue;
            }
            let read =
                ready.try_io(|fd| nix::unistd::read(fd.as_fd(), &mut self.buf).map_err(io::Error::from));
            match read {
                Ok(Ok(n)) => {
                    if n < self.buf.len() {
                        // A short read from a socket drained it (tokio's own
                        // streams take the same shortcut).
                        ready.clear_ready();
                    } else {
                        self.bulk = self.pipe.is_some();
                    }
                    return Ok(Staged::Buffer(n));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `staged` to `to`.
    async fn drain(&mut self, to: &AsyncFd<OwnedFd>, staged: Staged) -> io::Result<()> {
        let mut sent = 0;
        while sent < staged.len() {
            let mut ready = to.writable().await?;
            let written = ready.try_io(|fd| {
                let moved = match (staged, &self.pipe) {
                    (Staged::Pipe(n), Some(pipe)) => {
                        splice(pipe.read.as_fd(), None, fd.as_fd(), None, n - sent, FLAGS)
                    }
                    (Staged::Pipe(_), None) => unreachable!("bytes in a pipe the stage does not have"),
                    (Staged::Buffer(n), _) => nix::unistd::write(fd, &self.buf[sent..n]),
                };
                moved.map_err(io::Error::from)
            });
            if let Ok(moved) = written {
                sent += moved?;
            }
        }
        Ok(())
    }
}

/// No SPLICE_F_MORE: on TCP it corks, holding a small last segment (an
/// API response) back; the kernel itself flags "more" while the pipe
/// still holds data.
const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream as StdUnixStream;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream, UnixStream};

    use super::*;

    fn owned(s: StdUnixStream) -> OwnedFd {
        s.set_nonblocking(true).unwrap();
        s.into()
    }

    /// client <-> [relay] <-> server over socketpairs: a payload each way,
    /// both half-closes delivered, byte counts right.
    async fn round_trip(mover: Mover) {
        let (client, relay_front) = StdUnixStream::pair().unwrap();
        let (relay_back, server) = StdUnixStream::pair().unwrap();
        let relay = tokio::spawn(relay_sockets(owned(relay_front), owned(relay_back), mover));
        client.set_nonblocking(true).unwrap();
        server.set_nonblocking(true).unwrap();
        let (mut client, mut server) =
            (UnixStream::from_std(client).unwrap(), UnixStream::from_std(server).unwrap());
        let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let upload = upload.clone();
            tokio::spawn(async move {
                client.write_all(&upload).await.unwrap();
                client.shutdown().await.unwrap();
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).await.unwrap();
                answer
            })
        };
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == upload, "the upload arrived changed ({} of {} bytes)", got.len(), upload.len());
        server.write_all(b"stored").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"stored");
        assert_eq!(relay.await.unwrap().unwrap(), (upload.len() as u64, 6));
    }

    #[tokio::test]
    async fn splice_relays_both_ways_with_half_close() {
        round_trip(Mover::Splice).await;
    }

    #[tokio::test]
    async fn copy_relays_both_ways_with_half_close() {
        round_trip(Mover::Copy).await;
    }

    #[tokio::test]
    async fn splice_relays_between_unix_and_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut tcp_server, _) = listener.accept().await.unwrap();
        let (unix_end, relay_front) = StdUnixStream::pair().unwrap();
        let tcp_client: OwnedFd = tcp_client.into_std().unwrap().into();
        let relay = tokio::spawn(relay_sockets(owned(relay_front), tcp_client, Mover::Splice));
        unix_end.set_nonblocking(true).unwrap();
        let mut unix_end = UnixStream::from_std(unix_end).unwrap();
        unix_end.write_all(b"GET /version").await.unwrap();
        unix_end.shutdown().await.unwrap();
        let mut request = Vec::new();
        tcp_server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"GET /version");
        tcp_server.write_all(b"v1").await.unwrap();
        drop(tcp_server);
        let mut answer = Vec::new();
        unix_end.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"v1");
        assert_eq!(relay.await.unwrap().unwrap(), (12, 2));
    }

    /// A small request relayed to TCP must leave at once, not sit corked
    /// until the kernel's ~200 ms timer (what SPLICE_F_MORE did). The
    /// median of five exchanges keeps one slow wake-up from failing it.
    #[tokio::test]
    async fn small_messages_to_tcp_are_not_held_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut tcp_server, _) = listener.accept().await.unwrap();
        let (unix_end, relay_front) = StdUnixStream::pair().unwrap();
        let tcp_client: OwnedFd = tcp_client.into_std().unwrap().into();
        tokio::spawn(relay_sockets(owned(relay_front), tcp_client, Mover::Splice));
        unix_end.set_nonblocking(true).unwrap();
        let mut unix_end = UnixStream::from_std(unix_end).unwrap();
        let mut took = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            let started = std::time::Instant::now();
            unix_end.write_all(b"GET /healthz").await.unwrap();
            tcp_server.read_exact(&mut buf[..12]).await.unwrap();
            took.push(started.elapsed());
        }
        took.sort();
        assert!(took[2] < std::time::Duration::from_millis(100), "small messages were held back: {took:?}");
    }

    /// Thousands of tiny messages queued before the relay starts: one splice
    /// fills the pipe's slots (one per message) before the socket is
    /// drained, and the rest must still follow with no new wake-up.
    #[tokio::test]
    async fn a_fill_cut_short_by_the_pipe_does_not_strand_the_rest() {
        const MESSAGES: usize = 5_000;
        let (mut client, relay_front) = StdUnixStream::pair().unwrap();
        let (relay_back, server) = StdUnixStream::pair().unwrap();
        // Room for every message in the socket before anyone reads (root may).
        let room = 64 << 20;
        if nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::SndBufForce, &room).is_err() {
            nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::SndBuf, &room).unwrap();
        }
        let mut queued = 0;
        client.set_nonblocking(true).unwrap();
        for _ in 0..MESSAGES {
            match std::io::Write::write(&mut client, b"0123456789") {
                Ok(n) => queued += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        // More than the first read takes, and more messages than the pipe has slots.
        assert!(queued > FIRST_READ_BYTES + 10 * 256, "only {queued} bytes fit before the relay started");
        tokio::spawn(relay_sockets(owned(relay_front), owned(relay_back), Mover::Splice));
        server.set_nonblocking(true).unwrap();
        let mut server = UnixStream::from_std(server).unwrap();
        let mut got = vec![0u8; queued];
        tokio::time::timeout(std::time::Duration::from_secs(10), server.read_exact(&mut got))
            .await
            .expect("bytes were stranded in the client's socket")
            .unwrap();
        drop(client);
    }
}
