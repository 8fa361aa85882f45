//! The JSON shapes of the Engine API that the name sync reads (only the
//! fields it uses; everything else is ignored, every field may be absent),
//! and the alias rules that turn a container into DNS names.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Compose's project label.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose's service label.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";

/// One entry of `GET /containers/json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSummary {
    /// Full container id.
    #[serde(rename = "Id", default)]
    pub id: String,
    /// Names with their leading `/`.
    #[serde(rename = "Names", default)]
    pub names: Vec<String>,
    /// `running`, `exited`, ...
    #[serde(rename = "State", default)]
    pub state: String,
}

/// `GET /containers/{id}/json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInspect {
    /// Full container id.
    #[serde(rename = "Id", default)]
    pub id: String,
    /// The name with its leading `/`.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Run state.
    #[serde(rename = "State", default)]
    pub state: ContainerState,
    /// Configuration (labels).
    #[serde(rename = "Config", default)]
    pub config: ContainerConfig,
    /// Addresses.
    #[serde(rename = "NetworkSettings", default)]
    pub network_settings: NetworkSettings,
}

/// `State` of an inspected container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Whether it runs.
    #[serde(rename = "Running", default)]
    pub running: bool,
}

/// `Config` of an inspected container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Labels (`null` when there are none).
    #[serde(rename = "Labels", default, deserialize_with = "null_as_default")]
    pub labels: HashMap<String, String>,
}

/// `NetworkSettings` of an inspected container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// Endpoint per network name, sorted so addresses come in a stable order.
    #[serde(rename = "Networks", default, deserialize_with = "null_as_default")]
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// One network endpoint of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSettings {
    /// IPv4 address, empty if none.
    #[serde(rename = "IPAddress", default)]
    pub ip_address: String,
    /// Global IPv6 address, empty if none.
    #[serde(rename = "GlobalIPv6Address", default)]
    pub global_ipv6_address: String,
}

/// One message of `GET /events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `container`, `network`, ...
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// `start`, `die`, `exec_start: sh`, ...
    #[serde(rename = "Action", default)]
    pub action: String,
    /// What it happened to.
    #[serde(rename = "Actor", default)]
    pub actor: EventActor,
    /// Seconds since the epoch.
    #[serde(default)]
    pub time: i64,
}

/// `Actor` of an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventActor {
    /// The container id (full).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// `name`, `image`, labels, `oldName` for a rename, ...
    #[serde(rename = "Attributes", default, deserialize_with = "null_as_default")]
    pub attributes: HashMap<String, String>,
}

/// What a container event means for its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerAction {
    /// It started: look it up and publish its names.
    Start,
    /// Its process ended: its names go.
    Die,
    /// It was removed: its names go.
    Destroy,
    /// Its name changed: look it up again.
    Rename,
    /// It joined or left a network (a `network` event): look it up again
    /// for its addresses.
    NetworkChange,
}

impl Event {
    /// The action that changes a container's names or addresses, with
    /// the container's id, if this event is one: a container's start, die,
    /// destroy or rename, or a network's connect or disconnect of it.
    pub fn container_action(&self) -> Option<(ContainerAction, &str)> {
        let (action, id) = match (self.kind.as_str(), self.action.as_str()) {
            ("container", "start") => (ContainerAction::Start, self.actor.id.as_str()),
            ("container", "die") => (ContainerAction::Die, self.actor.id.as_str()),
            ("container", "destroy") => (ContainerAction::Destroy, self.actor.id.as_str()),
            ("container", "rename") => (ContainerAction::Rename, self.actor.id.as_str()),
            // A network event's actor is the network; the container is an attribute.
            ("network", "connect" | "disconnect") => {
                (ContainerAction::NetworkChange, self.actor.attributes.get("container")?.as_str())
            }
            _ => return None,
        };
        (!id.is_empty()).then_some((action, id))
    }
}

/// A container's DNS entry: its owner (full id), names and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNames {
    /// The full container id.
    pub owner: String,
    /// Aliases, see [`aliases`].
    pub names: Vec<String>,
    /// Every IPv4 and global IPv6 address on every network, without repeats.
    pub addrs: Vec<IpAddr>,
}

impl ContainerNames {
    /// The entry of a running container that has a name and an address;
    /// `None` otherwise (stopped, host or none network).
    pub fn from_inspect(container: &ContainerInspect) -> Option<Self> {
        if !container.state.running || container.id.is_empty() {
            return None;
        }
        let names = aliases(&container.name, &container.config.labels);
        let mut addrs = Vec::new();
        for endpoint in container.network_settings.networks.values() {
            for text in [&endpoint.ip_address, &endpoint.global_ipv6_address] {
                match text.parse::<IpAddr>() {
                    Ok(addr) if !addrs.contains(&addr) => addrs.push(addr),
                    _ => {}
                }
            }
        }
        (!names.is_empty() && !addrs.is_empty()).then(|| Self { owner: container.id.clone(), names, addrs })
    }
}

/// The names a container answers to: a Compose container (both Compose
/// labels) `["<service>.<project>", "<name>"]`, any other `["<name>"]`;
/// the leading `/` of Docker names is stripped.
pub fn aliases(name: &str, labels: &HashMap<String, String>) -> Vec<String> {
    let name = name.strip_prefix('/').unwrap_or(name);
    let mut names = Vec::with_capacity(2);
    let project = labels.get(COMPOSE_PROJECT_LABEL).filter(|p| !p.is_empty());
    let service = labels.get(COMPOSE_SERVICE_LABEL).filter(|s| !s.is_empty());
    if let (Some(project), Some(service)) = (project, service) {
        names.push(format!("{service}.{project}"));
    }
    if !name.is_empty() && !names.iter().any(|n| n == name) {
        names.push(name.to_owned());
    }
    names
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_plain_container_answers_to_its_name_without_the_slash() {
        assert_eq!(aliases("/web", &HashMap::new()), ["web"]);
    }

    #[test]
    fn a_compose_container_answers_to_service_dot_project_and_its_name() {
        let l = labels(&[(COMPOSE_PROJECT_LABEL, "shop"), (COMPOSE_SERVICE_LABEL, "db")]);
        assert_eq!(aliases("/shop-db-1", &l), ["db.shop", "shop-db-1"]);
        // One label alone is not Compose.
        assert_eq!(aliases("/x", &labels(&[(COMPOSE_PROJECT_LABEL, "shop")])), ["x"]);
    }

    #[test]
    fn inspect_json_with_nulls_and_two_networks_gives_every_address() {
        let json = r#"{"Id":"abc","Name":"/web","State":{"Running":true},"Config":{"Labels":null},
            "NetworkSettings":{"Networks":{
              "bridge":{"IPAddress":"172.17.0.2","GlobalIPv6Address":""},
              "front":{"IPAddress":"172.18.0.5","GlobalIPv6Address":"fd00::5"},
              "z":{"IPAddress":"172.17.0.2","GlobalIPv6Address":""}}}}"#;
        let inspect: ContainerInspect = serde_json::from_str(json).unwrap();
        let names = ContainerNames::from_inspect(&inspect).unwrap();
        assert_eq!(names.owner, "abc");
        assert_eq!(names.names, ["web"]);
        let addrs: Vec<IpAddr> =
            ["172.17.0.2", "172.18.0.5", "fd00::5"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(names.addrs, addrs);
    }

    #[test]
    fn stopped_or_addressless_containers_have_no_entry() {
        let mut inspect = ContainerInspect {
            id: "abc".into(),
            name: "/host-net".into(),
            state: ContainerState { running: true },
            ..Default::default()
        };
        assert_eq!(ContainerNames::from_inspect(&inspect), None);
        inspect.network_settings.networks.insert(
            "bridge".into(),
            EndpointSettings { ip_address: "10.0.0.2".into(), global_ipv6_address: String::new() },
        );
        assert!(ContainerNames::from_inspect(&inspect).is_some());
        inspect.state.running = false;
        assert_eq!(ContainerNames::from_inspect(&inspect), None);
    }

    #[test]
    fn only_name_changing_container_events_have_an_action() {
        let event: Event = serde_json::from_str(
            r#"{"status":"rename","id":"c1","Type":"container","Action":"rename",
                "Actor":{"ID":"c1","Attributes":{"name":"new","oldName":"/old"}},"scope":"local","time":5,"timeNano":5000}"#,
        )
        .unwrap();
        assert_eq!(event.container_action(), Some((ContainerAction::Rename, "c1")));
        let exec = Event { action: "exec_start: sh".into(), ..event.clone() };
        assert_eq!(exec.container_action(), None);
        let network = Event { kind: "network".into(), ..event };
        assert_eq!(network.container_action(), None);
    }

    #[test]
    fn network_connects_and_disconnects_name_the_container_in_their_attributes() {
        let event: Event = serde_json::from_str(
            r#"{"Type":"network","Action":"connect","Actor":{"ID":"n1",
                "Attributes":{"container":"c7","name":"shop_back","type":"bridge"}},"time":6}"#,
        )
        .unwrap();
        assert_eq!(event.container_action(), Some((ContainerAction::NetworkChange, "c7")));
        let disconnect = Event { action: "disconnect".into(), ..event.clone() };
        assert_eq!(disconnect.container_action(), Some((ContainerAction::NetworkChange, "c7")));
        let created = Event { action: "create".into(), ..event.clone() };
        assert_eq!(created.container_action(), None);
        let mut anonymous = event;
        anonymous.actor.attributes.clear();
        assert_eq!(anonymous.container_action(), None);
    }
}
