//! The cache of forwarded answers.
//!
//! A positive answer lives for the smallest TTL of its answer section; a
//! negative one (NXDOMAIN, or NOERROR without answers) for the SOA minimum
//! of its authority section (RFC 2308), capped. Hits are served with their
//! TTLs decreased by the time spent in the cache. Time is tokio's, so tests
//! can pause and advance it. Entries are bounded: the least recently used
//! one goes first. A hit only stamps its entry; the recency order is put
//! right lazily, when an eviction finds a stamp newer than the order says,
//! so the hot path moves nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::time::Instant;

/// What a cached answer is filed under: the question, name lowercased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    name: Name,
    qtype: RecordType,
    qclass: DNSClass,
}

impl CacheKey {
    pub(crate) fn new(name: &Name, qtype: RecordType, qclass: DNSClass) -> Self {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Self { name, qtype, qclass }
    }
}

#[derive(Debug)]
struct Entry {
    answer: Message,
    stored: Instant,
    ttl_secs: u32,
    /// Its key in the recency order.
    filed: u64,
    /// When it was last used (`filed` or later).
    used: u64,
}

#[derive(Debug, Default)]
struct Lru {
    entries: HashMap<CacheKey, Entry>,
    /// filed tick -> key, oldest first; one per entry.
    order: BTreeMap<u64, CacheKey>,
    next_tick: u64,
}

impl Lru {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Removes the least recently used entry, refiling the ones used
    /// since they were filed; whether one was removed.
    fn evict_one(&mut self) -> bool {
        while let Some((filed, key)) = self.order.pop_first() {
            match self.entries.get_mut(&key) {
                Some(entry) if entry.used > filed => {
                    entry.filed = entry.used;
                    self.order.insert(entry.used, key);
                }
                Some(_) => {
                    self.entries.remove(&key);
                    return true;
                }
                None => {}
            }
        }
        false
    }
}

/// A bounded TTL cache of upstream answers.
#[derive(Debug)]
pub(crate) struct Cache {
    lru: Mutex<Lru>,
    capacity: usize,
    negative_cap_secs: u32,
}

impl Cache {
    pub(crate) fn new(capacity: usize, negative_cap_secs: u32) -> Self {
        Self { lru: Mutex::default(), capacity, negative_cap_secs }
    }

    /// The cached answer to `key` with TTLs decreased by its age, if one is
    /// still fresh.
    pub(crate) fn get(&self, key: &CacheKey, now: Instant) -> Option<Message> {
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        let lru = &mut *lru;
        let tick = lru.tick();
        let entry = lru.entries.get_mut(key)?;
        let age = now.saturating_duration_since(entry.stored).as_secs();
        if age >= u64::from(entry.ttl_secs) {
            let filed = entry.filed;
            lru.entries.remove(key);
            lru.order.remove(&filed);
            return None;
        }
        entry.used = tick;
        // age < ttl_secs, a u32.
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        let mut answer = entry.answer.clone();
        for record in answer.answers.iter_mut().chain(&mut answer.authorities).chain(&mut answer.additionals)
        {
            record.decrement_ttl(age);
        }
        Some(answer)
    }

    /// Files `answer` under `key` if it may be cached; returns the TTL used.
    pub(crate) fn insert(&self, key: CacheKey, answer: &Message, now: Instant) -> Option<u32> {
        let ttl_secs = cacheable_ttl(answer, self.negative_cap_secs)?;
        if self.capacity == 0 {
            return None;
        }
        let mut stored = answer.clone();
        // OPT is per hop and never cached (RFC 6891 6.1.1).
        stored.edns = None;
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        let lru = &mut *lru;
        if let Some(old) = lru.entries.remove(&key) {
            lru.order.remove(&old.filed);
        }
        while lru.entries.len() >= self.capacity && lru.evict_one() {}
        let tick = lru.tick();
        lru.order.insert(tick, key.clone());
        lru.entries.insert(key, Entry { answer: stored, stored: now, ttl_secs, filed: tick, used: tick });
        Some(ttl_secs)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lru.lock().unwrap_or_else(PoisonError::into_inner).entries.len()
    }
}

/// How long `answer` may be cached, or `None` when it may not.
pub(crate) fn cacheable_ttl(answer: &Message, negative_cap_secs: u32) -> Option<u32> {
    if answer.truncation {
        return None;
    }
    let ttl = match answer.response_code {
        ResponseCode::NoError if !answer.answers.is_empty() => answer.answers.iter().map(|r| r.ttl).min(),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            negative_ttl(answer).map(|t| t.min(negative_cap_secs))
        }
        _ => None,
    }?;
    (ttl > 0).then_some(ttl)
}

/// RFC 2308 section 5: the smaller of the SOA record's TTL and its MINIMUM.
fn negative_ttl(answer: &Message) -> Option<u32> {
    answer.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, SOA};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a_answer(ttls: &[u32]) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        for (i, ttl) in ttls.iter().enumerate() {
            let ip = Ipv4Addr::new(10, 0, 0, u8::try_from(i).unwrap());
            m.add_answer(Record::from_rdata(name("example.com."), *ttl, RData::A(A(ip))));
        }
        m
    }

    fn negative(rcode: ResponseCode, soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        let soa = SOA::new(name("ns.example.com."), name("root.example.com."), 1, 60, 60, 60, minimum);
        m.add_authority(Record::from_rdata(name("example.com."), soa_ttl, RData::SOA(soa)));
        m
    }

    fn key(s: &str) -> CacheKey {
        CacheKey::new(&name(s), RecordType::A, DNSClass::IN)
    }

    #[test]
    fn a_positive_answer_lives_for_its_smallest_answer_ttl() {
        assert_eq!(cacheable_ttl(&a_answer(&[300, 30, 120]), 300), Some(30));
        assert_eq!(cacheable_ttl(&a_answer(&[0, 30]), 300), None);
    }

    #[test]
    fn a_negative_answer_lives_for_the_soa_minimum_capped() {
        assert_eq!(cacheable_ttl(&negative(ResponseCode::NXDomain, 3600, 60), 300), Some(60));
        assert_eq!(cacheable_ttl(&negative(ResponseCode::NoError, 30, 600), 300), Some(30));
        assert_eq!(cacheable_ttl(&negative(ResponseCode::NXDomain, 86400, 86400), 300), Some(300));
        let mut no_soa = Message::new(7, MessageType::Response, OpCode::Query);
        no_soa.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(cacheable_ttl(&no_soa, 300), None);
    }

    #[test]
    fn failures_and_truncated_answers_are_not_cached() {
        let mut servfail = a_answer(&[60]);
        servfail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cacheable_ttl(&servfail, 300), None);
        let mut truncated = a_answer(&[60]);
        truncated.metadata.truncation = true;
        assert_eq!(cacheable_ttl(&truncated, 300), None);
    }

    #[tokio::test(start_paused = true)]
    async fn hits_are_served_with_ttls_decreased_by_their_age_until_they_expire() {
        let cache = Cache::new(10, 300);
        let t0 = Instant::now();
        assert_eq!(cache.insert(key("Example.COM."), &a_answer(&[100, 40]), t0), Some(40));
        tokio::time::advance(Duration::from_millis(15_500)).await;
        let hit = cache.get(&key("example.com."), Instant::now()).expect("fresh");
        assert_eq!(hit.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(), [85, 25]);
        tokio::time::advance(Duration::from_millis(24_500)).await;
        assert!(cache.get(&key("example.com."), Instant::now()).is_none(), "expired at 40 s");
        assert_eq!(cache.len(), 0, "an expired entry is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn negative_entries_decrement_the_soa_ttl_too() {
        let cache = Cache::new(10, 300);
        cache.insert(key("nx.example.com."), &negative(ResponseCode::NXDomain, 120, 50), Instant::now());
        tokio::time::advance(Duration::from_secs(20)).await;
        let hit = cache.get(&key("nx.example.com."), Instant::now()).expect("fresh");
        assert_eq!(hit.response_code, ResponseCode::NXDomain);
        assert_eq!(hit.authorities[0].ttl, 100);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(cache.get(&key("nx.example.com."), Instant::now()).is_none());
    }

    #[test]
    fn the_least_recently_used_entry_is_evicted_at_capacity() {
        let cache = Cache::new(2, 300);
        let now = Instant::now();
        cache.insert(key("a."), &a_answer(&[60]), now);
        cache.insert(key("b."), &a_answer(&[60]), now);
        assert!(cache.get(&key("a."), now).is_some(), "a is now the most recent");
        cache.insert(key("c."), &a_answer(&[60]), now);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&key("b."), now).is_none(), "b was the least recently used");
        assert!(cache.get(&key("a."), now).is_some());
        assert!(cache.get(&key("c."), now).is_some());
    }

    #[test]
    fn eviction_follows_the_order_of_use_not_of_insertion() {
        let cache = Cache::new(3, 300);
        let now = Instant::now();
        for name in ["a.", "b.", "c."] {
            cache.insert(key(name), &a_answer(&[60]), now);
        }
        // Used in the order c, a, b: c is now the least recently used.
        for name in ["c.", "a.", "b."] {
            assert!(cache.get(&key(name), now).is_some());
        }
        cache.insert(key("d."), &a_answer(&[60]), now);
        assert!(cache.get(&key("c."), now).is_none(), "c went first");
        cache.insert(key("e."), &a_answer(&[60]), now);
        assert!(cache.get(&key("a."), now).is_none(), "then a");
        for name in ["b.", "d.", "e."] {
            assert!(cache.get(&key(name), now).is_some(), "{name} kept");
        }
        assert_eq!(cache.len(), 3);
    }
}
