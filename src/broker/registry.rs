//! The chat plane's router: who is connected, and which connection gets which chat topic.
//!
//! Lookups are by key (user → connections, group → subscribed connections, user → presence
//! watchers): O(1) per recipient connection, no scan over subscriptions, and every entry goes
//! away with its connection. A std mutex is enough: it is never held across an `.await`
//! and every critical section is a few map operations. A group's subscribers live behind
//! their own lock, so fanning a message out to thousands of members holds the registry-wide
//! lock only to look the group up. Lock order: the registry's, then a group's, never the
//! other way round.
//!
//! No delivery ever waits for a connection: each connection's queue ([`Outbox`]) is bounded
//! in messages and in bytes, and a QoS 1 delivery that does not fit marks the connection
//! too slow — it is closed and catches up from the store when it comes back (pending DMs
//! are pushed again, groups by history). A sender is never slowed by a slow receiver.

use crate::topic::matches;
use bytes::Bytes;
use parking_lot::Mutex;
use rumqttd::protocol::PublishProperties;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

pub type ConnId = u64;

/// A message for one connection's socket.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub topic: Bytes,
    pub payload: Bytes,
    /// 0 or 1.
    pub qos: u8,
    pub retain: bool,
    /// 5.0 properties (correlation data of an rpc answer); dropped for 3.1.1 clients. Boxed:
    /// every connection's queue allocates its first block of slots up front, so the size of a
    /// `Delivery` is paid per idle connection.
    pub props: Option<Box<PublishProperties>>,
}

/// What a delivery costs in a queue beyond topic and payload (the struct, the packet
/// header): enough that a flood of empty messages is bounded by bytes too.
const DELIVERY_OVERHEAD: usize = 64;

impl Delivery {
    /// Bytes charged against a connection's queue budget.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + DELIVERY_OVERHEAD
    }

    pub fn qos1(topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> Delivery {
        Delivery {
            topic: topic.into(),
            payload: payload.into(),
            qos: 1,
            retain: false,
            props: None,
        }
    }
}

/// The registry's side of one connection's outbound queue.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Delivery>,
    /// Bytes queued and not yet taken by the connection.
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    slow: Arc<Slow>,
}

/// Set once when the connection must close because it does not keep up.
#[derive(Default)]
pub struct Slow {
    flag: AtomicBool,
    notify: Notify,
}

impl Slow {
    fn mark(&self) -> bool {
        let first = !self.flag.swap(true, Ordering::AcqRel);
        if first {
            self.notify.notify_one();
        }
        first
    }

    /// Resolves once the connection has been marked too slow.
    pub async fn wait(&self) {
        if !self.flag.load(Ordering::Acquire) {
            self.notify.notified().await;
        }
    }
}

/// The connection's side: deliveries in queue order, bytes given back as they are taken.
pub struct OutboxRx {
    rx: mpsc::Receiver<Delivery>,
    bytes: Arc<AtomicUsize>,
    pub slow: Arc<Slow>,
}

impl OutboxRx {
    pub async fn recv(&mut self) -> Option<Delivery> {
        let d = self.rx.recv().await?;
        self.bytes.fetch_sub(d.size(), Ordering::AcqRel);
        Some(d)
    }

    pub fn try_recv(&mut self) -> Result<Delivery, mpsc::error::TryRecvError> {
        let d = self.rx.try_recv()?;
        self.bytes.fetch_sub(d.size(), Ordering::AcqRel);
        Ok(d)
    }
}

/// A connection's queue: at most `slots` deliveries and `max_bytes` bytes (one delivery
/// larger than `max_bytes` still fits into an empty queue).
pub fn outbox(slots: usize, max_bytes: usize) -> (Outbox, OutboxRx) {
    let (tx, rx) = mpsc::channel(slots.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(Slow::default());
    (
        Outbox {
            tx,
            bytes: bytes.clone(),
            max_bytes,
            slow: slow.clone(),
        },
        OutboxRx { rx, bytes, slow },
    )
}

/// What to do when a delivery does not fit a connection's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Close the connection as too slow (what it misses, it catches up from the store).
    Disconnect,
    /// Drop this delivery (QoS 0: typing) or let the caller retry (offline push).
    Skip,
}

impl Outbox {
    fn offer(&self, d: &Delivery, when_full: WhenFull) -> Offer {
        let size = d.size();
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        let fits = before == 0 || before + size <= self.max_bytes;
        let result = if !fits {
            Offer::Full
        } else {
            match self.tx.try_send(d.clone()) {
                Ok(()) => return Offer::Queued,
                Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
                Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
            }
        };
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        if result == Offer::Full && when_full == WhenFull::Disconnect && self.slow.mark() {
            metrics::counter!(crate::metrics::SLOW_CLIENTS, "reason" => "queue_full").increment(1);
        }
        result
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

struct Conn {
    user: Option<String>,
    out: Outbox,
    /// Filters inside `chat/u/{user}/`.
    user_filters: Vec<String>,
    /// Groups this connection has filters in (the filters live in the group's entry).
    groups: HashSet<String>,
    /// Users whose presence this connection watches.
    presence: HashSet<String>,
}

impl Conn {
    /// Whether one of this connection's `chat/u/{user}/…` filters matches `topic`.
    fn wants_user_topic(&self, topic: &str) -> bool {
        self.user_filters.iter().any(|f| matches(topic, f))
    }
}

/// One group's subscribed connections: their queues and filters inside `chat/g/{gid}/`.
type GroupSubs = Arc<Mutex<HashMap<ConnId, (Outbox, Vec<String>)>>>;

#[derive(Default)]
struct Maps {
    conns: HashMap<ConnId, Conn>,
    by_user: HashMap<String, HashSet<ConnId>>,
    by_group: HashMap<String, GroupSubs>,
    watchers: HashMap<String, HashSet<ConnId>>,
}

impl Maps {
    /// Removes `id` from group `gid`; the group's entry goes when it empties.
    fn leave_group(&mut self, gid: &str, id: ConnId) {
        let Some(subs) = self.by_group.get(gid) else {
            return;
        };
        let empty = {
            let mut subs = subs.lock();
            subs.remove(&id);
            subs.is_empty()
        };
        if empty {
            self.by_group.remove(gid);
        }
    }
}

#[derive(Default)]
pub struct Registry {
    maps: Mutex<Maps>,
    next_id: AtomicU64,
    /// Deliveries that did not fit a connection's queue.
    dropped: AtomicU64,
}

/// Outcome of offering a delivery to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The connection's queue was full: the delivery was not queued (and, for
    /// [`WhenFull::Disconnect`], the connection is closing as too slow).
    Full,
    Gone,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a connection; false (and nothing added) when `user` already has
    /// `max_per_user` connections. Checked under the lock, so concurrent logins of one user
    /// cannot overshoot the cap.
    pub fn register(
        &self,
        id: ConnId,
        user: Option<&str>,
        out: Outbox,
        max_per_user: usize,
    ) -> bool {
        let mut m = self.maps.lock();
        if let Some(u) = user {
            let conns = m.by_user.entry(u.to_owned()).or_default();
            if conns.len() >= max_per_user {
                if conns.is_empty() {
                    m.by_user.remove(u);
                }
                return false;
            }
            conns.insert(id);
        }
        m.conns.insert(
            id,
            Conn {
                user: user.map(str::to_owned),
                out,
                user_filters: Vec::new(),
                groups: HashSet::new(),
                presence: HashSet::new(),
            },
        );
        true
    }

    /// Removes a connection and everything that points at it. Returns the number of
    /// connections its user still has.
    pub fn unregister(&self, id: ConnId) -> usize {
        let mut m = self.maps.lock();
        let Some(conn) = m.conns.remove(&id) else {
            return 0;
        };
        for gid in &conn.groups {
            m.leave_group(gid, id);
        }
        for user in &conn.presence {
            remove_from(&mut m.watchers, user, id);
        }
        match &conn.user {
            Some(u) => {
                remove_from(&mut m.by_user, u, id);
                m.by_user.get(u).map_or(0, HashSet::len)
            }
            None => 0,
        }
    }

    /// Number of connections `user` has.
    pub fn connections_of(&self, user: &str) -> usize {
        self.maps.lock().by_user.get(user).map_or(0, HashSet::len)
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.connections_of(user) > 0
    }

    pub fn subscribe_user(&self, id: ConnId, filter: &str) {
        if let Some(c) = self.maps.lock().conns.get_mut(&id) {
            if !c.user_filters.iter().any(|f| f == filter) {
                c.user_filters.push(filter.to_owned());
            }
        }
    }

    pub fn subscribe_group(&self, id: ConnId, gid: &str, filter: &str) {
        let mut m = self.maps.lock();
        let Some(c) = m.conns.get_mut(&id) else {
            return;
        };
        c.groups.insert(gid.to_owned());
        let out = c.out.clone();
        let subs = m.by_group.entry(gid.to_owned()).or_default().clone();
        let mut subs = subs.lock();
        let (_, filters) = subs.entry(id).or_insert_with(|| (out, Vec::new()));
        if !filters.iter().any(|f| f == filter) {
            filters.push(filter.to_owned());
        }
    }

    pub fn subscribe_presence(&self, id: ConnId, user: &str) {
        let mut m = self.maps.lock();
        let Some(c) = m.conns.get_mut(&id) else {
            return;
        };
        c.presence.insert(user.to_owned());
        m.watchers.entry(user.to_owned()).or_default().insert(id);
    }

    /// Removes a chat filter of any kind from a connection. Returns whether it existed.
    pub fn unsubscribe(&self, id: ConnId, filter: &str) -> bool {
        let mut m = self.maps.lock();
        let Some(c) = m.conns.get_mut(&id) else {
            return false;
        };
        let before = c.user_filters.len();
        c.user_filters.retain(|f| f != filter);
        let mut found = c.user_filters.len() != before;
        // Group filters are `chat/g/{gid}/…` with a literal gid (the ACL allows no other).
        let mut emptied_group = None;
        if let Some((gid, _)) = filter
            .strip_prefix("chat/g/")
            .and_then(|rest| rest.split_once('/'))
        {
            if let Some(subs) = m.by_group.get(gid) {
                let mut subs = subs.lock();
                if let Some((_, filters)) = subs.get_mut(&id) {
                    let n = filters.len();
                    filters.retain(|f| f != filter);
                    found |= filters.len() != n;
                    if filters.is_empty() {
                        emptied_group = Some(gid.to_owned());
                    }
                }
            }
        }
        let Some(c) = m.conns.get_mut(&id) else {
            return found;
        };
        let mut unwatched = None;
        if let Some(user) = filter.strip_prefix("chat/p/") {
            if c.presence.remove(user) {
                found = true;
                unwatched = Some(user.to_owned());
            }
        }
        if let Some(gid) = emptied_group {
            c.groups.remove(&gid);
            m.leave_group(&gid, id);
        }
        if let Some(user) = unwatched {
            remove_from(&mut m.watchers, &user, id);
        }
        found
    }

    /// Stops delivering a group's topics to every connection of `user` (removed from the
    /// group), including subscriptions made while still a member.
    pub fn drop_group_member(&self, gid: &str, user: &str) {
        let mut m = self.maps.lock();
        let ids: Vec<ConnId> = m
            .by_user
            .get(user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            if let Some(c) = m.conns.get_mut(&id) {
                c.groups.remove(gid);
            }
            m.leave_group(gid, id);
        }
    }

    /// Delivers to every connection of `user` whose `chat/u/{user}/…` filters match `topic`.
    /// Never waits: a connection whose queue is full is closed as too slow (QoS 1) or
    /// misses the delivery (QoS 0).
    pub fn deliver_user(&self, user: &str, d: &Delivery) -> usize {
        let topic = String::from_utf8_lossy(&d.topic);
        let m = self.maps.lock();
        let Some(ids) = m.by_user.get(user) else {
            return 0;
        };
        let mut n = 0;
        for id in ids {
            if let Some(c) = m.conns.get(id) {
                if c.wants_user_topic(&topic) && self.offer(&c.out, d) == Offer::Queued {
                    n += 1;
                }
            }
        }
        n
    }

    /// Delivers to one connection if it subscribed to a matching `chat/u/…` filter.
    pub fn deliver_conn(&self, id: ConnId, d: &Delivery, when_full: WhenFull) -> Offer {
        let topic = String::from_utf8_lossy(&d.topic);
        let m = self.maps.lock();
        match m.conns.get(&id) {
            Some(c) if c.wants_user_topic(&topic) => self.offer_with(&c.out, d, when_full),
            Some(_) => Offer::Gone,
            None => Offer::Gone,
        }
    }

    /// Delivers to every connection subscribed to a matching filter of group `gid`. Holds
    /// the registry-wide lock only to find the group.
    pub fn deliver_group(&self, gid: &str, d: &Delivery) -> usize {
        let topic = String::from_utf8_lossy(&d.topic);
        let Some(subs) = self.maps.lock().by_group.get(gid).cloned() else {
            return 0;
        };
        let subs = subs.lock();
        subs.values()
            .filter(|(_, filters)| filters.iter().any(|f| matches(&topic, f)))
            .filter(|(out, _)| self.offer(out, d) == Offer::Queued)
            .count()
    }

    /// Delivers a presence update to everyone watching `user`.
    pub fn deliver_presence(&self, user: &str, d: &Delivery) -> usize {
        let m = self.maps.lock();
        let Some(ids) = m.watchers.get(user) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| m.conns.get(id))
            .filter(|c| self.offer(&c.out, d) == Offer::Queued)
            .count()
    }

    /// Sends to one connection regardless of its subscriptions (a retained value right
    /// after its SUBSCRIBE).
    pub fn send_to(&self, id: ConnId, d: Delivery) -> Offer {
        let m = self.maps.lock();
        match m.conns.get(&id) {
            Some(c) => self.offer(&c.out, &d),
            None => Offer::Gone,
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn connection_count(&self) -> usize {
        self.maps.lock().conns.len()
    }

    /// QoS 1 deliveries that do not fit close the connection; QoS 0 ones are dropped.
    fn offer(&self, out: &Outbox, d: &Delivery) -> Offer {
        let when_full = if d.qos == 0 {
            WhenFull::Skip
        } else {
            WhenFull::Disconnect
        };
        self.offer_with(out, d, when_full)
    }

    fn offer_with(&self, out: &Outbox, d: &Delivery, when_full: WhenFull) -> Offer {
        let r = out.offer(d, when_full);
        // Counted as dropped: the deliveries nobody will retry (the offline push retries).
        if r == Offer::Full && (when_full == WhenFull::Disconnect || d.qos == 0) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::DELIVERIES_DROPPED).increment(1);
        }
        if r == Offer::Full && out.is_closed() {
            return Offer::Gone;
        }
        r
    }
}

fn remove_from(map: &mut HashMap<String, HashSet<ConnId>>, key: &str, id: ConnId) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(r: &Registry, user: &str) -> (ConnId, OutboxRx) {
        let id = r.next_conn_id();
        let (out, rx) = outbox(4, 1 << 20);
        assert!(r.register(id, Some(user), out, 100));
        (id, rx)
    }

    fn is_slow(rx: &OutboxRx) -> bool {
        rx.slow.flag.load(Ordering::Acquire)
    }

    #[test]
    fn user_delivery_follows_filters() {
        let r = Registry::new();
        let (a1, mut rx1) = conn(&r, "alice");
        let (_a2, mut rx2) = conn(&r, "alice");
        r.subscribe_user(a1, "chat/u/alice/in/#");
        assert_eq!(
            r.deliver_user("alice", &Delivery::qos1("chat/u/alice/in/msg", "x")),
            1
        );
        assert!(rx1.try_recv().is_ok());
        assert!(rx2.try_recv().is_err());
        assert_eq!(
            r.deliver_user("bob", &Delivery::qos1("chat/u/bob/in/msg", "x")),
            0
        );
        assert_eq!(r.connections_of("alice"), 2);
        assert_eq!(r.unregister(a1), 1);
    }

    #[test]
    fn group_member_removal_stops_delivery_at_once() {
        let r = Registry::new();
        let (a, mut rxa) = conn(&r, "alice");
        let (b, mut rxb) = conn(&r, "bob");
        r.subscribe_group(a, "team", "chat/g/team/#");
        r.subscribe_group(b, "team", "chat/g/team/msg");
        let d = Delivery::qos1("chat/g/team/msg", "hi");
        assert_eq!(r.deliver_group("team", &d), 2);
        r.drop_group_member("team", "bob");
        assert_eq!(r.deliver_group("team", &d), 1);
        assert_eq!(
            rxa.try_recv().map(|d| d.payload).ok(),
            Some(Bytes::from("hi"))
        );
        assert_eq!(
            rxb.try_recv().map(|d| d.payload).ok(),
            Some(Bytes::from("hi"))
        );
        assert!(rxb.try_recv().is_err());
        // A filter for another sub-topic does not match.
        assert_eq!(
            r.deliver_group("team", &Delivery::qos1("chat/g/team/typing", "t")),
            1
        );
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_connection_slow_and_never_waits() {
        let r = Registry::new();
        let (a, mut rx) = conn(&r, "alice");
        let (b, rx_b) = conn(&r, "alice");
        r.subscribe_user(a, "chat/u/alice/#");
        r.subscribe_user(b, "chat/u/alice/#");
        let d = Delivery::qos1("chat/u/alice/in/ack", "x");
        for _ in 0..4 {
            assert_eq!(r.deliver_user("alice", &d), 2);
        }
        // Typing (QoS 0) that does not fit is dropped; the connection stays.
        let mut typing = d.clone();
        typing.qos = 0;
        assert_eq!(r.deliver_user("alice", &typing), 0);
        assert!(!is_slow(&rx) && !is_slow(&rx_b));
        // The reader of `a` takes one: a has room again, b is full and is closed as slow.
        assert!(rx.recv().await.is_some());
        assert_eq!(r.deliver_user("alice", &d), 1);
        assert!(!is_slow(&rx));
        assert!(is_slow(&rx_b));
        tokio::time::timeout(std::time::Duration::from_secs(1), rx_b.slow.wait())
            .await
            .expect("the slow connection is told");
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let r = Registry::new();
        let id = r.next_conn_id();
        let (out, mut rx) = outbox(1000, 1000);
        assert!(r.register(id, Some("alice"), out, 100));
        r.subscribe_user(id, "chat/u/alice/#");
        let big = Delivery::qos1("chat/u/alice/in/msg", vec![0u8; 600]);
        // An empty queue takes one delivery whatever its size; the next must fit the budget.
        assert_eq!(r.deliver_conn(id, &big, WhenFull::Skip), Offer::Queued);
        assert_eq!(r.deliver_conn(id, &big, WhenFull::Skip), Offer::Full);
        assert!(!is_slow(&rx), "Skip leaves the connection alone");
        let small = Delivery::qos1("chat/u/alice/in/msg", vec![0u8; 100]);
        assert_eq!(r.deliver_conn(id, &small, WhenFull::Skip), Offer::Queued);
        assert_eq!(r.deliver_conn(id, &big, WhenFull::Disconnect), Offer::Full);
        assert!(is_slow(&rx));
        // Taking deliveries gives their bytes back.
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.bytes.load(Ordering::Acquire), 0);
    }

    #[test]
    fn deliveries_stay_small() {
        // Each connection's queue allocates a block of 32 slots up front.
        assert!(
            std::mem::size_of::<Delivery>() <= 80,
            "{}",
            std::mem::size_of::<Delivery>()
        );
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let r = Registry::new();
        let (a, _rx) = conn(&r, "alice");
        r.subscribe_user(a, "chat/u/alice/#");
        for _ in 0..4 {
            assert_eq!(
                r.deliver_conn(
                    a,
                    &Delivery::qos1("chat/u/alice/in/msg", "x"),
                    WhenFull::Disconnect
                ),
                Offer::Queued
            );
        }
        assert_eq!(
            r.deliver_conn(
                a,
                &Delivery::qos1("chat/u/alice/in/msg", "x"),
                WhenFull::Disconnect
            ),
            Offer::Full
        );
        assert_eq!(r.dropped(), 1);
    }

    #[test]
    fn unregister_cleans_every_index() {
        let r = Registry::new();
        let (a, _rx) = conn(&r, "alice");
        r.subscribe_group(a, "team", "chat/g/team/#");
        r.subscribe_presence(a, "bob");
        r.unregister(a);
        let m = r.maps.lock();
        assert!(
            m.by_group.is_empty()
                && m.watchers.is_empty()
                && m.by_user.is_empty()
                && m.conns.is_empty()
        );
    }

    #[test]
    fn group_fan_out_and_churn_run_side_by_side() {
        let r = Registry::new();
        let members: Vec<(ConnId, OutboxRx)> = (0..2000)
            .map(|i| {
                let (id, rx) = conn(&r, &format!("u{i}"));
                r.subscribe_group(id, "big", "chat/g/big/#");
                (id, rx)
            })
            .collect();
        let churn = {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let (id, _rx) = conn(&r, &format!("c{i}"));
                    r.subscribe_group(id, "big", "chat/g/big/msg");
                    r.subscribe_user(id, "chat/u/x/#");
                    r.unregister(id);
                }
            })
        };
        for _ in 0..3 {
            assert!(r.deliver_group("big", &Delivery::qos1("chat/g/big/msg", "x")) >= 2000);
        }
        churn.join().expect("churn");
        r.drop_group_member("big", "u0");
        assert_eq!(
            r.deliver_group("big", &Delivery::qos1("chat/g/big/msg", "x")),
            1999
        );
        for (id, _) in &members {
            r.unregister(*id);
        }
        assert!(r.maps.lock().by_group.is_empty());
    }

    #[test]
    fn unsubscribe_presence_and_group() {
        let r = Registry::new();
        let (a, _rx) = conn(&r, "alice");
        r.subscribe_group(a, "team", "chat/g/team/#");
        r.subscribe_presence(a, "bob");
        assert!(r.unsubscribe(a, "chat/g/team/#"));
        assert!(r.unsubscribe(a, "chat/p/bob"));
        assert!(!r.unsubscribe(a, "chat/p/bob"));
        assert_eq!(
            r.deliver_presence("bob", &Delivery::qos1("chat/p/bob", "x")),
            0
        );
        assert_eq!(
            r.deliver_group("team", &Delivery::qos1("chat/g/team/msg", "x")),
            0
        );
    }
}
