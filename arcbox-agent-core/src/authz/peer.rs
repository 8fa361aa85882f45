//! The peer filter: a transport that closes, at accept, connections whose
//! vsock peer CID the policy does not admit, so a process in another VM
//! (or the guest itself, over loopback) never reaches a handler or a proxy.

use std::sync::Arc;

use super::Authz;
use crate::transport::Transport;

/// `T`, admitting only the peers `authz` admits. Refused connections are
/// dropped (the peer sees its connection closed) and the accept goes on.
pub struct PeerFiltered<T> {
    inner: T,
    authz: Arc<Authz>,
}

impl<T: Transport> PeerFiltered<T> {
    /// Filters the connections `inner` accepts.
    pub fn new(inner: T, authz: Arc<Authz>) -> Self {
        Self { inner, authz }
    }
}

impl<T: Transport> Transport for PeerFiltered<T> {
    type Stream = T::Stream;

    async fn accept(&mut self) -> std::io::Result<(Self::Stream, String)> {
        loop {
            let (stream, peer) = self.inner.accept().await?;
            if self.authz.admits_peer(T::peer_cid(&stream), &peer, &self.inner.local_address()) {
                return Ok((stream, peer));
            }
            drop(stream);
        }
    }

    fn local_address(&self) -> String {
        self.inner.local_address()
    }

    fn peer_cid(stream: &Self::Stream) -> std::io::Result<Option<u32>> {
        T::peer_cid(stream)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, DuplexStream, ReadBuf};
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::AuthConfig;

    /// An in-memory connection that knows its peer's CID, as a vsock one does.
    struct CidStream {
        cid: u32,
        io: DuplexStream,
    }

    impl AsyncRead for CidStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CidStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Connections arrive over a channel, each from the CID it says.
    struct FakeVsock(mpsc::Receiver<CidStream>);

    impl Transport for FakeVsock {
        type Stream = CidStream;

        async fn accept(&mut self) -> std::io::Result<(CidStream, String)> {
            match self.0.recv().await {
                Some(stream) => {
                    let peer = format!("vsock:{}:1", stream.cid);
                    Ok((stream, peer))
                }
                None => Err(std::io::ErrorKind::BrokenPipe.into()),
            }
        }

        fn local_address(&self) -> String {
            "vsock:any:1024".into()
        }

        fn peer_cid(stream: &CidStream) -> std::io::Result<Option<u32>> {
            Ok(Some(stream.cid))
        }
    }

    #[tokio::test]
    async fn connections_from_other_cids_are_closed_and_the_host_gets_through() {
        let (authz, _) = Authz::from_config(&AuthConfig::default());
        let authz = Arc::new(authz);
        let (connect, incoming) = mpsc::channel(4);
        let mut filtered = PeerFiltered::new(FakeVsock(incoming), Arc::clone(&authz));
        let mut refused_ends = Vec::new();
        for cid in [3, 7, 2] {
            let (mine, theirs) = tokio::io::duplex(64);
            connect.send(CidStream { cid, io: theirs }).await.unwrap();
            refused_ends.push(mine);
        }
        let (stream, peer) = filtered.accept().await.unwrap();
        assert_eq!((stream.cid, peer.as_str()), (2, "vsock:2:1"));
        assert_eq!(authz.counts().peers_refused, 2);
        // The refused peers see their connection closed.
        for mut end in refused_ends.drain(..2) {
            let mut rest = Vec::new();
            assert_eq!(end.read_to_end(&mut rest).await.unwrap(), 0);
        }
    }
}
