//! The chat plane's router: who is connected, and which connection gets which chat topic.
//!
//! Lookups are by key (user → connections, group → subscribed connections, user → presence
//! watchers): O(1) per recipient connection, no scan over subscriptions, and every entry goes
//! away with its connection. A std mutex is enough: it is never held across an `.await`
//! and every critical section is a few map operations.

use bytes::Bytes;
use parking_lot::Mutex;
use rumqttd::protocol::{matches, PublishProperties};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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

impl Delivery {
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

struct Conn {
    user: Option<String>,
    tx: mpsc::Sender<Delivery>,
    /// Filters inside `chat/u/{user}/`.
    user_filters: Vec<String>,
    /// gid → filters inside `chat/g/{gid}/`.
    group_filters: HashMap<String, Vec<String>>,
    /// Users whose presence this connection watches.
    presence: HashSet<String>,
}

impl Conn {
    /// Whether one of this connection's `chat/u/{user}/…` filters matches `topic`.
    fn wants_user_topic(&self, topic: &str) -> bool {
        self.user_filters.iter().any(|f| matches(topic, f))
    }
}

#[derive(Default)]
struct Maps {
    conns: HashMap<ConnId, Conn>,
    by_user: HashMap<String, HashSet<ConnId>>,
    by_group: HashMap<String, HashSet<ConnId>>,
    watchers: HashMap<String, HashSet<ConnId>>,
}

#[derive(Default)]
pub struct Registry {
    maps: Mutex<Maps>,
    next_id: AtomicU64,
    /// Deliveries dropped because a connection's queue was full.
    dropped: AtomicU64,
}

/// Outcome of offering a delivery to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The connection's queue was full: it is lagging and the delivery was dropped (chat
    /// messages stay recoverable from the store).
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

    pub fn register(&self, id: ConnId, user: Option<&str>, tx: mpsc::Sender<Delivery>) {
        let mut m = self.maps.lock();
        if let Some(u) = user {
            m.by_user.entry(u.to_owned()).or_default().insert(id);
        }
        m.conns.insert(
            id,
            Conn {
                user: user.map(str::to_owned),
                tx,
                user_filters: Vec::new(),
                group_filters: HashMap::new(),
                presence: HashSet::new(),
            },
        );
    }

    /// Removes a connection and everything that points at it. Returns the number of
    /// connections its user still has.
    pub fn unregister(&self, id: ConnId) -> usize {
        let mut m = self.maps.lock();
        let Some(conn) = m.conns.remove(&id) else {
            return 0;
        };
        for gid in conn.group_filters.keys() {
            remove_from(&mut m.by_group, gid, id);
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
        let filters = c.group_filters.entry(gid.to_owned()).or_default();
        if !filters.iter().any(|f| f == filter) {
            filters.push(filter.to_owned());
        }
        m.by_group.entry(gid.to_owned()).or_default().insert(id);
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
        let mut emptied_group = None;
        for (gid, filters) in c.group_filters.iter_mut() {
            let n = filters.len();
            filters.retain(|f| f != filter);
            if filters.len() != n {
                found = true;
                if filters.is_empty() {
                    emptied_group = Some(gid.clone());
                }
            }
        }
        let mut unwatched = None;
        if let Some(user) = filter.strip_prefix("chat/p/") {
            if c.presence.remove(user) {
                found = true;
                unwatched = Some(user.to_owned());
            }
        }
        if let Some(gid) = emptied_group {
            c.group_filters.remove(&gid);
            remove_from(&mut m.by_group, &gid, id);
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
                c.group_filters.remove(gid);
            }
            remove_from(&mut m.by_group, gid, id);
        }
    }

    /// Delivers to every connection of `user` whose `chat/u/{user}/…` filters match `topic`.
    pub fn deliver_user(&self, user: &str, d: &Delivery) -> usize {
        let topic = String::from_utf8_lossy(&d.topic);
        let m = self.maps.lock();
        let Some(ids) = m.by_user.get(user) else {
            return 0;
        };
        let mut n = 0;
        for id in ids {
            if let Some(c) = m.conns.get(id) {
                if c.wants_user_topic(&topic) && self.offer(c, d) == Offer::Queued {
                    n += 1;
                }
            }
        }
        n
    }

    /// Like [`Registry::deliver_user`], but waits up to `wait` for room in each connection's
    /// queue instead of dropping. For what a user must not miss while connected (sent acks,
    /// rpc answers, DMs): the wait pushes back on whoever produces the load.
    pub async fn deliver_user_wait(&self, user: &str, d: &Delivery, wait: Duration) -> usize {
        let targets = self.user_targets(user, d);
        let mut n = 0;
        for tx in targets {
            n += usize::from(self.send_wait(&tx, d.clone(), wait).await);
        }
        n
    }

    /// Waits up to `wait` for room in one connection's queue (it must have a matching filter).
    pub async fn deliver_conn_wait(&self, id: ConnId, d: &Delivery, wait: Duration) -> Offer {
        let tx = {
            let topic = String::from_utf8_lossy(&d.topic);
            let m = self.maps.lock();
            match m.conns.get(&id) {
                Some(c) if c.wants_user_topic(&topic) => c.tx.clone(),
                _ => return Offer::Gone,
            }
        };
        if self.send_wait(&tx, d.clone(), wait).await {
            Offer::Queued
        } else if tx.is_closed() {
            Offer::Gone
        } else {
            Offer::Full
        }
    }

    fn user_targets(&self, user: &str, d: &Delivery) -> Vec<mpsc::Sender<Delivery>> {
        let topic = String::from_utf8_lossy(&d.topic);
        let m = self.maps.lock();
        m.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| m.conns.get(id))
            .filter(|c| c.wants_user_topic(&topic))
            .map(|c| c.tx.clone())
            .collect()
    }

    async fn send_wait(&self, tx: &mpsc::Sender<Delivery>, d: Delivery, wait: Duration) -> bool {
        match tokio::time::timeout(wait, tx.send(d)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::DELIVERIES_DROPPED).increment(1);
                false
            }
        }
    }

    /// Delivers to one connection if it subscribed to a matching `chat/u/…` filter.
    pub fn deliver_conn(&self, id: ConnId, d: &Delivery) -> Offer {
        let topic = String::from_utf8_lossy(&d.topic);
        let m = self.maps.lock();
        match m.conns.get(&id) {
            Some(c) if c.wants_user_topic(&topic) => self.offer(c, d),
            Some(_) => Offer::Gone,
            None => Offer::Gone,
        }
    }

    /// Room left in a connection's queue (0 when gone).
    pub fn capacity(&self, id: ConnId) -> usize {
        self.maps
            .lock()
            .conns
            .get(&id)
            .map_or(0, |c| c.tx.capacity())
    }

    /// Delivers to every connection subscribed to a matching filter of group `gid`.
    pub fn deliver_group(&self, gid: &str, d: &Delivery) -> usize {
        let topic = String::from_utf8_lossy(&d.topic);
        let m = self.maps.lock();
        let Some(ids) = m.by_group.get(gid) else {
            return 0;
        };
        let mut n = 0;
        for id in ids {
            if let Some(c) = m.conns.get(id) {
                let hit = c
                    .group_filters
                    .get(gid)
                    .is_some_and(|fs| fs.iter().any(|f| matches(&topic, f)));
                if hit && self.offer(c, d) == Offer::Queued {
                    n += 1;
                }
            }
        }
        n
    }

    /// Delivers a presence update to everyone watching `user`.
    pub fn deliver_presence(&self, user: &str, d: &Delivery) -> usize {
        let m = self.maps.lock();
        let Some(ids) = m.watchers.get(user) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| m.conns.get(id))
            .filter(|c| self.offer(c, d) == Offer::Queued)
            .count()
    }

    /// Sends to one connection regardless of its subscriptions (a retained value right
    /// after its SUBSCRIBE).
    pub fn send_to(&self, id: ConnId, d: Delivery) -> Offer {
        let m = self.maps.lock();
        match m.conns.get(&id) {
            Some(c) => self.offer(c, &d),
            None => Offer::Gone,
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn connection_count(&self) -> usize {
        self.maps.lock().conns.len()
    }

    fn offer(&self, c: &Conn, d: &Delivery) -> Offer {
        match c.tx.try_send(d.clone()) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::DELIVERIES_DROPPED).increment(1);
                Offer::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
        }
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

    fn conn(r: &Registry, user: &str) -> (ConnId, mpsc::Receiver<Delivery>) {
        let id = r.next_conn_id();
        let (tx, rx) = mpsc::channel(4);
        r.register(id, Some(user), tx);
        (id, rx)
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
    async fn waiting_delivery_waits_for_room_then_gives_up() {
        let r = Registry::new();
        let (a, mut rx) = conn(&r, "alice");
        r.subscribe_user(a, "chat/u/alice/#");
        let d = Delivery::qos1("chat/u/alice/in/ack", "x");
        for _ in 0..4 {
            assert_eq!(
                r.deliver_user_wait("alice", &d, Duration::from_millis(10))
                    .await,
                1
            );
        }
        assert_eq!(
            r.deliver_user_wait("alice", &d, Duration::from_millis(10))
                .await,
            0
        );
        assert_eq!(r.dropped(), 1);
        // The consumer frees one slot later and keeps the receiver alive.
        let consumer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let first = rx.recv().await;
            (first, rx)
        });
        assert_eq!(
            r.deliver_user_wait("alice", &d, Duration::from_secs(5))
                .await,
            1
        );
        let (first, _rx) = consumer.await.expect("consumer");
        assert!(first.is_some());
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
                r.deliver_conn(a, &Delivery::qos1("chat/u/alice/in/msg", "x")),
                Offer::Queued
            );
        }
        assert_eq!(
            r.deliver_conn(a, &Delivery::qos1("chat/u/alice/in/msg", "x")),
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
