//! The guest DNS server's extension requests: DnsList (its names, zone and
//! upstreams) and DnsSetUpstreams (where it forwards, changed at run time,
//! e.g. after the host moved networks).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::protocol::MessageType;
use crate::protocol::proto::agent::{
    DnsListRequest, DnsListResponse, DnsName, DnsSetUpstreamsRequest, DnsSetUpstreamsResponse,
};
use crate::rpc::{RequestContext, Router, RpcError, UnaryHandler};

/// The standard DNS port, for upstreams given without one.
const DNS_PORT: u16 = 53;
/// More upstreams than anyone needs; bounds what one request can install.
const MAX_UPSTREAMS: usize = 16;

/// One registered name as the DNS server answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    /// The name as registered (`web`, `api.myproject`).
    pub name: String,
    /// The addresses it answers with.
    pub addrs: Vec<IpAddr>,
    /// Who registered it (container ids).
    pub owners: Vec<String>,
}

/// What the DNS requests need from the guest DNS server.
pub trait DnsControl: Send + Sync + 'static {
    /// The local zone (`arcbox.local`).
    fn zone(&self) -> String;
    /// Every registered name, sorted by name.
    fn names(&self) -> Vec<NameEntry>;
    /// The upstreams forwarded to, in failover order.
    fn upstreams(&self) -> Vec<SocketAddr>;
    /// Replaces the upstreams.
    fn set_upstreams(&self, upstreams: Vec<SocketAddr>);
}

/// Registers the DNS requests on `router`.
pub fn register_dns<D: DnsControl>(router: &mut Router, dns: Arc<D>) {
    router
        .unary(MessageType::DnsListRequest, List(Arc::clone(&dns)))
        .unary(MessageType::DnsSetUpstreamsRequest, SetUpstreams(dns));
}

struct List<D>(Arc<D>);

impl<D: DnsControl> UnaryHandler for List<D> {
    type Request = DnsListRequest;
    type Response = DnsListResponse;

    async fn handle(&self, _: RequestContext<'_>, _: DnsListRequest) -> Result<DnsListResponse, RpcError> {
        let names = self
            .0
            .names()
            .into_iter()
            .map(|entry| DnsName {
                name: entry.name,
                addresses: entry.addrs.iter().map(IpAddr::to_string).collect(),
                owners: entry.owners,
            })
            .collect();
        Ok(DnsListResponse { names, upstreams: texts(&self.0.upstreams()), zone: self.0.zone() })
    }
}

struct SetUpstreams<D>(Arc<D>);

impl<D: DnsControl> UnaryHandler for SetUpstreams<D> {
    type Request = DnsSetUpstreamsRequest;
    type Response = DnsSetUpstreamsResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        request: DnsSetUpstreamsRequest,
    ) -> Result<DnsSetUpstreamsResponse, RpcError> {
        let upstreams = parse_upstreams(&request.upstreams).map_err(RpcError::bad_request)?;
        tracing::info!(upstreams = ?upstreams, "DNS upstreams replaced");
        self.0.set_upstreams(upstreams);
        Ok(DnsSetUpstreamsResponse { upstreams: texts(&self.0.upstreams()) })
    }
}

fn texts(upstreams: &[SocketAddr]) -> Vec<String> {
    upstreams.iter().map(SocketAddr::to_string).collect()
}

/// Parses `IP`, `IP:PORT` and `[V6]:PORT`; at least one, at most
/// 16, every entry valid (nothing is half-applied).
pub fn parse_upstreams(texts: &[String]) -> Result<Vec<SocketAddr>, String> {
    if texts.is_empty() {
        return Err("no upstreams given".to_owned());
    }
    if texts.len() > MAX_UPSTREAMS {
        return Err(format!("{} upstreams given; at most {MAX_UPSTREAMS}", texts.len()));
    }
    texts
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DNS_PORT)))
                .map_err(|_| format!("not an upstream address (IP, IP:PORT or [V6]:PORT): {text:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<SocketAddr>>);

    impl DnsControl for Recorded {
        fn zone(&self) -> String {
            "arcbox.local".to_owned()
        }
        fn names(&self) -> Vec<NameEntry> {
            vec![NameEntry {
                name: "web".to_owned(),
                addrs: vec!["172.17.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
                owners: vec!["c1".to_owned()],
            }]
        }
        fn upstreams(&self) -> Vec<SocketAddr> {
            self.0.lock().unwrap().clone()
        }
        fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
            *self.0.lock().unwrap() = upstreams;
        }
    }

    fn ctx() -> RequestContext<'static> {
        RequestContext { msg_type: 0x0103, trace_id: "", peer: "test" }
    }

    #[test]
    fn upstreams_take_the_default_port_and_v6_brackets() {
        let texts = ["10.0.2.1", "1.1.1.1:5353", "[2001:db8::1]:53", " 9.9.9.9 "].map(String::from);
        let parsed = parse_upstreams(&texts).unwrap();
        let shown: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.2.1:53", "1.1.1.1:5353", "[2001:db8::1]:53", "9.9.9.9:53"]);
    }

    #[tokio::test]
    async fn a_bad_entry_is_refused_whole_and_the_old_upstreams_stay() {
        let dns = Arc::new(Recorded::default());
        dns.set_upstreams(vec!["10.0.2.1:53".parse().unwrap()]);
        let handler = SetUpstreams(Arc::clone(&dns));
        let request = DnsSetUpstreamsRequest { upstreams: vec!["1.1.1.1".into(), "dns.example".into()] };
        let err = handler.handle(ctx(), request).await.unwrap_err();
        assert!(err.to_string().contains("dns.example"), "{err}");
        assert_eq!(dns.upstreams(), ["10.0.2.1:53".parse::<SocketAddr>().unwrap()]);
        let empty = handler.handle(ctx(), DnsSetUpstreamsRequest { upstreams: vec![] }).await;
        assert!(empty.is_err());
    }

    #[tokio::test]
    async fn set_then_list_shows_the_new_upstreams_and_the_names() {
        let dns = Arc::new(Recorded::default());
        let set = SetUpstreams(Arc::clone(&dns))
            .handle(ctx(), DnsSetUpstreamsRequest { upstreams: vec!["192.168.1.1".into()] })
            .await
            .unwrap();
        assert_eq!(set.upstreams, ["192.168.1.1:53"]);
        let list = List(dns).handle(ctx(), DnsListRequest {}).await.unwrap();
        assert_eq!(
            (list.zone.as_str(), list.upstreams.as_slice()),
            ("arcbox.local", &["192.168.1.1:53".to_owned()][..])
        );
        assert_eq!(list.names[0].addresses, ["172.17.0.2", "fd00::2"]);
        assert_eq!(list.names[0].owners, ["c1"]);
    }
}
