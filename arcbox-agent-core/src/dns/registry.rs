//! Names of containers (and anything else the guest runs) and their addresses.
//!
//! Each entry belongs to an owner (a container id): compose replicas share a
//! service name, so a name answers with the addresses of every owner that
//! holds it, and removing one owner keeps the others.
//!
//! Memory matters here (a guest can run thousands of containers): each
//! owner id and each name is one shared `Arc<str>`, referenced from both
//! indexes rather than copied, and a name's holders are a plain vector
//! (almost always of one).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use super::DEFAULT_ZONE;

/// One owner's registration, as [`Registry::list`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The owner (a container id).
    pub owner: String,
    /// Its names, normalized: lowercase, without the zone suffix or a trailing dot.
    pub names: Vec<String>,
    /// Its addresses, IPv4 and IPv6.
    pub addrs: Vec<IpAddr>,
}

/// The owner prefix of sandbox registrations (`sandbox/<id>`).
pub const SANDBOX_OWNER_PREFIX: &str = "sandbox/";

/// Names to addresses, by owner. Cheap to clone: clones share one table.
#[derive(Clone, Debug)]
pub struct Registry {
    zone: Arc<str>,
    table: Arc<RwLock<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    /// Owner -> its entry. A `BTreeMap` keeps listings in a stable order.
    owners: BTreeMap<Arc<str>, Owned>,
    /// Normalized name -> the owners that hold it, sorted (stable answers).
    by_name: BTreeMap<Arc<str>, Vec<Arc<str>>>,
}

#[derive(Debug)]
struct Owned {
    names: Box<[Arc<str>]>,
    addrs: Box<[IpAddr]>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(DEFAULT_ZONE)
    }
}

impl Registry {
    /// An empty registry for names under `zone` (such as `arcbox.local`).
    pub fn new(zone: &str) -> Self {
        Self { zone: normalize_zone(zone).into(), table: Arc::default() }
    }

    /// The local zone, lowercase, without a trailing dot.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Registers (or replaces) `owner`'s names and addresses.
    pub fn set_owner(&self, owner: impl Into<String>, names: Vec<String>, addrs: Vec<IpAddr>) {
        let owner = owner.into();
        let names = self.normalize_names(names);
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        table.remove(&owner);
        table.insert(owner, names, addrs);
    }

    /// Removes `owner`'s registration; whether it had one.
    pub fn remove_owner(&self, owner: &str) -> bool {
        self.table.write().unwrap_or_else(PoisonError::into_inner).remove(owner)
    }

    /// Replaces the container runtime's part of the table with `entries` (a
    /// reconcile after reconnecting to the runtime: containers not listed
    /// are gone). Owners of other sources, named `source/id` (sandboxes:
    /// [`SANDBOX_OWNER_PREFIX`]), are kept: container ids have no `/`.
    pub fn replace_all<I, O>(&self, entries: I)
    where
        I: IntoIterator<Item = (O, Vec<String>, Vec<IpAddr>)>,
        O: Into<String>,
    {
        let mut fresh = Table::default();
        for (owner, names, addrs) in entries {
            let owner = owner.into();
            fresh.remove(&owner);
            fresh.insert(owner, self.normalize_names(names), addrs);
        }
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        for (owner, kept) in table.owners.iter().filter(|(owner, _)| owner.contains('/')) {
            if !fresh.owners.contains_key(owner) {
                fresh.insert(
                    owner.to_string(),
                    kept.names.iter().map(ToString::to_string).collect(),
                    kept.addrs.to_vec(),
                );
            }
        }
        *table = fresh;
    }

    /// Every registration, by owner.
    pub fn list(&self) -> Vec<RegistryEntry> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table
            .owners
            .iter()
            .map(|(owner, o)| RegistryEntry {
                owner: owner.to_string(),
                names: o.names.iter().map(ToString::to_string).collect(),
                addrs: o.addrs.to_vec(),
            })
            .collect()
    }

    /// The addresses of `name` (`web`, `web.arcbox.local`, any case, with or
    /// without a trailing dot), from all its owners without repeats; `None`
    /// when no owner holds the name (a registered name without addresses is
    /// `Some(empty)`).
    pub fn lookup(&self, name: &str) -> Option<Vec<IpAddr>> {
        let key = self.relative_name(name)?;
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let owners = table.by_name.get(key.as_str())?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for owner in owners {
            for addr in table.owners.get(owner).map(|o| &*o.addrs).unwrap_or_default() {
                if !addrs.contains(addr) {
                    addrs.push(*addr);
                }
            }
        }
        Some(addrs)
    }

    /// The names (normalized, relative to the zone) that answer with `addr`.
    pub fn names_of(&self, addr: IpAddr) -> Vec<String> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let names: BTreeSet<&Arc<str>> =
            table.owners.values().filter(|o| o.addrs.contains(&addr)).flat_map(|o| o.names.iter()).collect();
        names.into_iter().map(ToString::to_string).collect()
    }

    /// `name` relative to the zone, normalized: `Web.Arcbox.Local.` -> `web`.
    /// `None` for the zone apex and empty names.
    pub fn relative_name(&self, name: &str) -> Option<String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let relative = match name.strip_suffix(&*self.zone) {
            Some("") => return None,
            Some(rest) => match rest.strip_suffix('.') {
                Some(label) => label.to_owned(),
                // `xarcbox.local` is not under the zone.
                None => name,
            },
            None => name,
        };
        (!relative.is_empty()).then_some(relative)
    }

    /// Whether `name` is the zone or a name under it.
    pub fn in_zone(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == *self.zone || name.strip_suffix(&*self.zone).is_some_and(|rest| rest.ends_with('.'))
    }

    fn normalize_names(&self, names: Vec<String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            if let Some(n) = self.relative_name(&name)
                && !out.contains(&n)
            {
                out.push(n);
            }
        }
        out
    }
}

impl Table {
    fn insert(&mut self, owner: String, names: Vec<String>, addrs: Vec<IpAddr>) {
        let owner: Arc<str> = owner.into();
        let names: Box<[Arc<str>]> = names
            .into_iter()
            .map(|name| {
                // Share the index's copy of a name other owners hold already.
                let name: Arc<str> = match self.by_name.get_key_value(name.as_str()) {
                    Some((shared, _)) => Arc::clone(shared),
                    None => name.into(),
                };
                let holders = self.by_name.entry(Arc::clone(&name)).or_insert_with(|| Vec::with_capacity(1));
                if let Err(at) = holders.binary_search(&owner) {
                    holders.insert(at, Arc::clone(&owner));
                }
                name
            })
            .collect();
        self.owners.insert(owner, Owned { names, addrs: addrs.into_boxed_slice() });
    }

    fn remove(&mut self, owner: &str) -> bool {
        let Some(old) = self.owners.remove(owner) else { return false };
        for name in old.names.iter() {
            if let Some(holders) = self.by_name.get_mut(&**name) {
                holders.retain(|o| &**o != owner);
                if holders.is_empty() {
                    self.by_name.remove(&**name);
                }
            }
        }
        true
    }
}

fn normalize_zone(zone: &str) -> String {
    zone.trim_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_answers_bare_and_under_the_zone_in_any_case() {
        let r = Registry::default();
        r.set_owner("c1", vec!["Web".into()], vec![ip("172.17.0.2")]);
        for asked in ["web", "WEB", "web.arcbox.local", "Web.ArcBox.Local.", "web."] {
            assert_eq!(r.lookup(asked), Some(vec![ip("172.17.0.2")]), "{asked}");
        }
        assert_eq!(r.lookup("web.other.local"), None);
        assert_eq!(r.lookup("arcbox.local"), None);
        assert_eq!(r.lookup("db"), None);
    }

    #[test]
    fn names_registered_with_the_zone_suffix_are_stored_relative() {
        let r = Registry::default();
        r.set_owner("c1", vec!["db.arcbox.local.".into(), "db".into()], vec![ip("10.0.0.9")]);
        assert_eq!(r.list()[0].names, vec!["db".to_owned()]);
        assert_eq!(r.lookup("db"), Some(vec![ip("10.0.0.9")]));
    }

    #[test]
    fn replicas_share_a_name_and_removing_one_keeps_the_others() {
        let r = Registry::default();
        r.set_owner("a", vec!["web".into(), "proj-web-1".into()], vec![ip("10.0.0.1")]);
        r.set_owner("b", vec!["web".into(), "proj-web-2".into()], vec![ip("10.0.0.2"), ip("fd00::2")]);
        assert_eq!(r.lookup("web"), Some(vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::2")]));
        assert!(r.remove_owner("a"));
        assert!(!r.remove_owner("a"));
        assert_eq!(r.lookup("web"), Some(vec![ip("10.0.0.2"), ip("fd00::2")]));
        assert_eq!(r.lookup("proj-web-1"), None);
        assert_eq!(r.lookup("proj-web-2"), Some(vec![ip("10.0.0.2"), ip("fd00::2")]));
    }

    #[test]
    fn set_owner_again_replaces_its_old_names() {
        let r = Registry::default();
        r.set_owner("a", vec!["old".into()], vec![ip("10.0.0.1")]);
        r.set_owner("a", vec!["new".into()], vec![ip("10.0.0.3")]);
        assert_eq!(r.lookup("old"), None);
        assert_eq!(r.lookup("new"), Some(vec![ip("10.0.0.3")]));
        assert_eq!(r.list().len(), 1);
    }

    #[test]
    fn replace_all_drops_owners_not_listed() {
        let r = Registry::default();
        r.set_owner("stale", vec!["gone".into()], vec![ip("10.0.0.1")]);
        r.replace_all([("x", vec!["web".to_owned()], vec![ip("10.0.0.5")])]);
        assert_eq!(r.lookup("gone"), None);
        assert_eq!(r.lookup("web"), Some(vec![ip("10.0.0.5")]));
        assert_eq!(r.list().iter().map(|e| e.owner.as_str()).collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn a_runtime_reconcile_keeps_the_sandboxes_names() {
        let r = Registry::default();
        r.set_owner("sandbox/box1", vec!["box1".into()], vec![ip("172.20.0.2")]);
        r.set_owner("c1", vec!["web".into()], vec![ip("172.17.0.2")]);
        r.replace_all([("c2", vec!["db".to_owned()], vec![ip("172.17.0.3")])]);
        assert_eq!(r.lookup("box1"), Some(vec![ip("172.20.0.2")]));
        assert_eq!(r.lookup("web"), None);
        assert_eq!(r.lookup("db"), Some(vec![ip("172.17.0.3")]));
    }

    #[test]
    fn clones_share_one_table() {
        let r = Registry::default();
        let clone = r.clone();
        clone.set_owner("a", vec!["web".into()], vec![ip("10.0.0.1")]);
        assert!(r.lookup("web").is_some());
    }

    #[test]
    fn reverse_lookup_names_every_owner_of_an_address() {
        let r = Registry::default();
        r.set_owner("a", vec!["web".into(), "proj-web-1".into()], vec![ip("10.0.0.1")]);
        r.set_owner("b", vec!["db".into()], vec![ip("10.0.0.2")]);
        assert_eq!(r.names_of(ip("10.0.0.1")), vec!["proj-web-1".to_owned(), "web".to_owned()]);
        assert!(r.names_of(ip("10.0.0.7")).is_empty());
    }

    #[test]
    fn zone_membership_needs_a_label_boundary() {
        let r = Registry::new("Arcbox.Local.");
        assert_eq!(r.zone(), "arcbox.local");
        assert!(r.in_zone("arcbox.local."));
        assert!(r.in_zone("x.ARCBOX.local"));
        assert!(!r.in_zone("xarcbox.local"));
        assert!(!r.in_zone("example.com"));
        assert_eq!(r.relative_name("xarcbox.local"), Some("xarcbox.local".to_owned()));
    }
}
