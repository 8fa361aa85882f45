//! The DHCP client's state machine (RFC 2131 §4.4): INIT (discover,
//! select) → BOUND → RENEWING at T1 (unicast to the server) → REBINDING
//! at T2 (broadcast) → back to INIT when the lease ends or a server says
//! NAK. It talks through a [`DhcpSocket`] and reports through callbacks,
//! so it runs the same over the fake network (with tokio's paused clock)
//! and the real one. Timers are tokio's, so tests can skip through hours.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout_at};

use crate::net::dhcp::{Lease, Reply, Transaction};
use crate::sys::DhcpSocket;

/// The client's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpTiming {
    /// Wait for the first OFFER; doubled after each silent try.
    pub first_retry: Duration,
    /// The longest wait between DISCOVERs (a server that is down is
    /// retried forever at this pace).
    pub max_retry: Duration,
    /// Wait for the ACK to a REQUEST, per try.
    pub ack_wait: Duration,
    /// REQUESTs per offer before starting over.
    pub request_tries: u32,
    /// The shortest wait between REQUESTs while renewing or rebinding
    /// (RFC 2131 says 60 s).
    pub min_extend_retry: Duration,
}

impl Default for DhcpTiming {
    /// Faster than RFC 2131's 4-to-64-second DISCOVER backoff: the server is
    /// usually the VMM's own network stack, answering at once or not at all
    /// yet, and a guest without an address is a guest nobody can use.
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(16),
            ack_wait: Duration::from_secs(3),
            request_tries: 3,
            min_extend_retry: Duration::from_secs(60),
        }
    }
}

/// How keeping a lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// A server extended it (possibly changed): the new lease, from now.
    Extended(Lease),
    /// It is gone; why.
    Lost(String),
}

/// One interface's DHCP conversation.
pub struct DhcpClient {
    socket: Box<dyn DhcpSocket>,
    mac: [u8; 6],
    timing: DhcpTiming,
    ids: RandomState,
    exchanges: u64,
}

impl DhcpClient {
    /// A client for the interface with hardware address `mac`, on `socket`.
    pub fn new(socket: Box<dyn DhcpSocket>, mac: [u8; 6], timing: DhcpTiming) -> Self {
        Self { socket, mac, timing, ids: RandomState::new(), exchanges: 0 }
    }

    /// A new transaction id: random per client, distinct per exchange.
    fn transaction(&mut self) -> Transaction {
        self.exchanges += 1;
        let xid = self.ids.hash_one((self.mac, self.exchanges)) as u32;
        Transaction { xid, mac: self.mac }
    }

    /// INIT → SELECTING → REQUESTING until a server ACKs; retries forever
    /// with a growing pause. `failed(attempt, why)` hears of each failed try.
    pub async fn acquire(&mut self, mut failed: impl FnMut(u32, &str)) -> Lease {
        let mut wait = self.timing.first_retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.try_acquire(wait).await {
                Ok(lease) => return lease,
                Err(why) => {
                    tracing::info!(attempt, why, "no DHCP lease yet");
                    failed(attempt, &why);
                }
            }
            wait = (wait * 2).min(self.timing.max_retry);
        }
    }

    /// One DISCOVER (waiting `wait` for an OFFER), then REQUESTs for it.
    async fn try_acquire(&mut self, wait: Duration) -> Result<Lease, String> {
        let tx = self.transaction();
        let started = Instant::now();
        self.send(&tx.discover(), Ipv4Addr::BROADCAST).await?;
        let offer = loop {
            match self.reply(&tx, started + wait).await {
                Some(Reply::Offer(offer)) => break offer,
                Some(_) => continue,
                None => return Err(format!("no DHCPOFFER within {} ms", wait.as_millis())),
            }
        };
        // Whatever happens next, do not come back sooner than `wait`.
        let retry_at = started + wait;
        for _ in 0..self.timing.request_tries {
            self.send(&tx.select(&offer), Ipv4Addr::BROADCAST).await?;
            let deadline = Instant::now() + self.timing.ack_wait;
            loop {
                match self.reply(&tx, deadline).await {
                    Some(Reply::Ack(lease)) => return Ok(lease),
                    Some(Reply::Nak { server, message }) => {
                        sleep_until(retry_at).await;
                        return Err(format!("DHCPNAK from {server}: {message}"));
                    }
                    Some(Reply::Offer(_)) => continue,
                    None => break,
                }
            }
        }
        sleep_until(retry_at).await;
        Err(format!("no DHCPACK from {} for {}", offer.server, offer.address))
    }

    /// BOUND until T1, RENEWING until T2, REBINDING until the lease ends.
    /// `bound_at` is when the server granted it; `renewing()` is called
    /// when T1 passes.
    pub async fn keep(&mut self, lease: &Lease, bound_at: Instant, mut renewing: impl FnMut()) -> Kept {
        if lease.lease_secs == u32::MAX {
            // An infinite lease is kept without talking to anyone.
            return std::future::pending().await;
        }
        let at = |secs: u32| bound_at + Duration::from_secs(u64::from(secs));
        let (t1, t2, end) = (at(lease.renew_secs), at(lease.rebind_secs), at(lease.lease_secs));
        sleep_until(t1).await;
        renewing();
        if let Some(kept) = self.extend(lease, lease.server, t2).await {
            return kept;
        }
        if let Some(kept) = self.extend(lease, Ipv4Addr::BROADCAST, end).await {
            return kept;
        }
        Kept::Lost(format!("lease on {} expired without an answer from any server", lease.address))
    }

    /// REQUESTs extending `lease` to `to` until `until`; `None` if no
    /// server answered in time.
    async fn extend(&mut self, lease: &Lease, to: Ipv4Addr, until: Instant) -> Option<Kept> {
        loop {
            let now = Instant::now();
            if now >= until {
                return None;
            }
            let tx = self.transaction();
            if let Err(why) = self.send(&tx.extend(lease), to).await {
                tracing::warn!(why, "cannot send a DHCP renewal");
            }
            let deadline = (now + ((until - now) / 2).max(self.timing.min_extend_retry)).min(until);
            loop {
                match self.reply(&tx, deadline).await {
                    Some(Reply::Ack(new)) => return Some(Kept::Extended(new)),
                    Some(Reply::Nak { server, message }) => {
                        return Some(Kept::Lost(format!("DHCPNAK from {server}: {message}")));
                    }
                    Some(Reply::Offer(_)) => continue,
                    None => break,
                }
            }
            sleep_until(deadline).await;
        }
    }

    /// Gives `lease` back to its server (best effort: no answer comes).
    pub async fn release(&mut self, lease: &Lease) {
        let tx = self.transaction();
        if let Err(why) = self.send(&tx.release(lease), lease.server).await {
            tracing::warn!(why, "cannot send DHCPRELEASE");
        }
    }

    async fn send(&self, packet: &[u8], to: Ipv4Addr) -> Result<(), String> {
        self.socket.send(packet, to).await.map_err(|e| format!("cannot send to {to}:67: {e}"))
    }

    /// The next reply to `tx` before `deadline`; anything else is skipped.
    async fn reply(&self, tx: &Transaction, deadline: Instant) -> Option<Reply> {
        let mut buf = vec![0u8; 4096];
        loop {
            match timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Err(_elapsed) => return None,
                Ok(Ok(n)) => match tx.parse(&buf[..n]) {
                    Ok(Some(reply)) => return Some(reply),
                    Ok(None) => {}
                    Err(err) => tracing::debug!(%err, "ignoring a DHCP packet"),
                },
                Ok(Err(err)) => {
                    // Do not spin on a socket error; try again shortly.
                    tracing::warn!(%err, "DHCP socket receive failed");
                    let pause = Instant::now() + Duration::from_millis(200);
                    sleep_until(pause.min(deadline)).await;
                }
            }
        }
    }
}
