//! Messaging semantics: send, receipts, typing, offline delivery, groups, presence, rpc.
//!
//! The connection layer hands every publish on a user's `out/` topics to [`ChatService`]
//! (through the [`ChatPlane`] trait); the service validates, persists through the `Store`,
//! answers on the sender's `in/` topics and fans out through the chat-plane registry.

mod convert;
pub mod ids;
pub mod rate;

use crate::broker::codec::ReplyProps;
use crate::broker::registry::{Delivery, Offer, Registry, WhenFull};
use crate::broker::{ChatPlane, Client, Refusal, Turn};
use crate::config::Config;
use crate::health::Health;
use crate::metrics as m;
use crate::protocol::{
    self, decode_receipt, decode_rpc, decode_send, decode_typing, encode, encode_body, group_topic,
    presence_topic, user_in_topic, AckError, ChatError, ConversationOut, ConversationsOut,
    Encoding, ErrorCode, EventKind, EventOut, GroupInfoOut, GroupKind, GroupListOut, HistoryOut,
    InKind, Limits, MembershipOut, MessageOut, OutKind, PresenceEntry, PresenceListOut,
    PresenceOut, PresenceState, ProfileOut, ProfilesOut, ReceiptOut, RpcOp, RpcResponse, RpcResult,
    SentAck, Target, TypingOut, GROUP_INFO_MEMBERS_MAX,
};
use crate::store::{Appended, ConvId, ConvKind, NewMessage, Store, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use ids::{now_ms, IdGenerator};
use parking_lot::Mutex;
use rate::UserLimiter;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Last-seen writes per user are coalesced to at most one per this interval.
const LAST_SEEN_EVERY: Duration = Duration::from_secs(15);
/// How long the offline push waits for a connection to make room before it stops (the
/// messages stay pending and are pushed again on the next inbox subscribe).
const OFFLINE_DRAIN_WAIT: Duration = Duration::from_secs(120);

pub struct ChatService {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    health: Arc<Health>,
    encoding: Encoding,
    limits: Limits,
    group_max_members: u64,
    group_receipts_max: u64,
    offline_page: u32,
    ids: IdGenerator,
    messages: UserLimiter,
    typing: UserLimiter,
    last_seen_written: Mutex<HashMap<String, Instant>>,
}

impl ChatService {
    /// Forgets rate-limit state of users whose buckets have filled up again.
    pub fn sweep(&self) {
        self.messages.sweep();
        self.typing.sweep();
    }

    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        health: Arc<Health>,
    ) -> Result<ChatService, String> {
        let c = &config.chat;
        let encoding = if c.encoding == "json" {
            Encoding::Json
        } else {
            Encoding::MsgPack
        };
        let limits = Limits {
            max_payload: c.max_payload,
            max_text: c.max_text,
            max_cid: c.max_cid,
        };
        limits
            .check()
            .map_err(|(key, reason)| format!("chat.{key}: {reason}"))?;
        Ok(ChatService {
            store,
            registry,
            health,
            encoding,
            limits,
            group_max_members: c.group_max_members,
            group_receipts_max: c.group_receipts_max,
            offline_page: c.offline_page,
            ids: IdGenerator::new(1),
            messages: UserLimiter::new(c.rate_per_sec, c.rate_burst),
            typing: UserLimiter::new(c.typing_per_sec, c.typing_per_sec.max(1.0) * 2.0),
            last_seen_written: Mutex::new(HashMap::new()),
        })
    }

    fn encode<T: Serialize + ?Sized>(&self, v: &T) -> Bytes {
        Bytes::from(encode(self.encoding, v))
    }

    /// Queues to every listening device of `user`; never waits (see `Registry`).
    fn to_user<T: Serialize + ?Sized>(&self, user: &str, kind: InKind, v: &T) -> usize {
        let d = Delivery::qos1(user_in_topic(user, kind), self.encode(v));
        self.registry.deliver_user(user, &d)
    }

    fn to_group<T: Serialize + ?Sized>(&self, gid: &str, kind: GroupKind, v: &T, qos: u8) -> usize {
        let mut d = Delivery::qos1(group_topic(gid, kind), self.encode(v));
        d.qos = qos;
        self.registry.deliver_group(gid, &d)
    }

    /// Answers `error` on `in/ack` and returns the matching PUBACK refusal.
    fn ack_error(&self, user: &str, cid: Option<String>, error: ChatError) -> Refusal {
        metrics::counter!(m::CHAT_ERRORS, "code" => error.code.as_str()).increment(1);
        let refusal = refusal_of(error.code);
        self.to_user(user, InKind::Ack, &AckError { cid, error });
        refusal
    }

    /// Moves last seen, at most once per [`LAST_SEEN_EVERY`] per user.
    async fn activity(&self, user: &str, force: bool) {
        let now = Instant::now();
        {
            let mut seen = self.last_seen_written.lock();
            match seen.get(user) {
                Some(t) if !force && now.duration_since(*t) < LAST_SEEN_EVERY => return,
                _ => {
                    seen.insert(user.to_owned(), now);
                }
            }
        }
        if let Err(e) = self.store.touch_last_seen(user, now_ms()).await {
            debug!(error = %e, "last seen not recorded");
        }
    }

    async fn is_member(&self, gid: &str, user: &str) -> Result<bool, ChatError> {
        Ok(self.store.is_member(gid, user).await?)
    }

    /// Whether `user` takes part in `conv`.
    async fn participant(&self, conv: &ConvId, user: &str) -> Result<bool, ChatError> {
        match conv.kind() {
            Some(ConvKind::Direct { a, b }) => Ok(a == user || b == user),
            Some(ConvKind::Group { gid }) => self.is_member(gid, user).await,
            None => Ok(false),
        }
    }

    // ---------------------------------------------------------------- send

    /// `Ok` only once the message is durably stored (or was stored before: a resent cid).
    async fn send(&self, client: &Client, payload: &[u8], mut turn: Turn) -> Result<(), Refusal> {
        let received = Instant::now();
        let me = client.user.as_str();
        let req = match decode_send(payload, &self.limits) {
            Ok(r) => r,
            Err(AckError { cid, error }) => return Err(self.ack_error(me, cid, error)),
        };
        let cid = Some(req.cid.clone());
        let Some(conv) = req.to.conv(me) else {
            return Err(self.ack_error(
                me,
                cid,
                ChatError::bad_request("cannot send a message to yourself"),
            ));
        };
        if let Target::Group(gid) = &req.to {
            match self.is_member(gid, me).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(self.ack_error(
                        me,
                        cid,
                        ChatError::forbidden(format!("not a member of group {gid}")),
                    ))
                }
                Err(e) => return Err(self.ack_error(me, cid, e)),
            }
        }
        let body = encode_body(&req.body);
        // Store requests are queued in the order their futures are first polled: wait for the
        // connection's earlier sends to be queued, queue this one, then let the next one go.
        // The id is taken inside the turn too, so ids follow seqs within a conversation.
        turn.wait().await;
        let started = Instant::now();
        let ts = now_ms();
        let msg = NewMessage {
            id: self.ids.next(ts),
            conv: conv.clone(),
            from: me.to_owned(),
            ts,
            cid: req.cid.clone(),
            body,
            reply_to: req.reply_to.map(|id| id.0),
        };
        let mut append = std::pin::pin!(self.store.append_message(msg));
        let first_poll = futures_util::FutureExt::now_or_never(&mut append);
        turn.pass();
        let appended = match first_poll {
            Some(done) => done,
            None => append.await,
        };
        metrics::histogram!(m::STORE_LATENCY, "op" => "append")
            .record(started.elapsed().as_secs_f64());
        self.health.write_result(&appended);
        let appended = match appended {
            Ok(a) => a,
            Err(e) => return Err(self.ack_error(me, cid, e.into())),
        };
        // The durability promise: this ack (and the PUBACK) go out only after the commit.
        let stored = appended.message();
        self.to_user(me, InKind::Ack, &SentAck::of(stored));
        if let Appended::Stored(stored) = &appended {
            match MessageOut::from_stored(stored) {
                Ok(out) => {
                    let payload = self.encode(&out);
                    match &req.to {
                        Target::User(peer) => {
                            let d =
                                Delivery::qos1(user_in_topic(peer, InKind::Msg), payload.clone());
                            self.registry.deliver_user(peer, &d);
                            let d = Delivery::qos1(user_in_topic(me, InKind::Msg), payload);
                            self.registry.deliver_user(me, &d);
                        }
                        Target::Group(gid) => {
                            self.registry.deliver_group(
                                gid,
                                &Delivery::qos1(group_topic(gid, GroupKind::Msg), payload),
                            );
                        }
                    }
                    metrics::histogram!(m::DELIVERY_LATENCY)
                        .record(received.elapsed().as_secs_f64());
                }
                Err(e) => warn!(error = %e, "stored message could not be rendered"),
            }
        }
        self.activity(me, false).await;
        Ok(())
    }

    // ------------------------------------------------------------- receipt

    /// `Ok` only once the cursor is durably stored.
    async fn receipt(&self, client: &Client, payload: &[u8]) -> Result<(), Refusal> {
        let me = client.user.as_str();
        let req = match decode_receipt(payload, &self.limits) {
            Ok(r) => r,
            Err(e) => return Err(self.ack_error(me, None, e)),
        };
        match self.participant(&req.conv, me).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(self.ack_error(
                    me,
                    None,
                    ChatError::forbidden(format!("not a participant of {}", req.conv)),
                ))
            }
            Err(e) => return Err(self.ack_error(me, None, e)),
        }
        let moved = self
            .store
            .set_cursor(me, &req.conv, req.kind.into(), req.up_to)
            .await;
        self.health.write_result(&moved);
        let moved = match moved {
            Ok(m) => m,
            Err(e) => return Err(self.ack_error(me, None, e.into())),
        };
        if moved.moved {
            let out = ReceiptOut {
                conv: req.conv.clone(),
                by: me.to_owned(),
                kind: req.kind,
                up_to: moved.value,
                ts: now_ms(),
            };
            match req.conv.kind() {
                Some(ConvKind::Direct { .. }) => {
                    if let Some(peer) = req.conv.kind().and_then(|k| k.peer_of(me)) {
                        self.to_user(peer, InKind::Receipt, &out);
                    }
                    // My other devices learn what I have read.
                    self.to_user(me, InKind::Receipt, &out);
                }
                Some(ConvKind::Group { gid }) => {
                    let small = match self.store.group(gid).await {
                        Ok(Some(g)) => g.member_count <= self.group_receipts_max,
                        _ => false,
                    };
                    if small {
                        self.to_group(gid, GroupKind::Receipt, &out, 1);
                    }
                }
                None => {}
            }
        }
        self.activity(me, false).await;
        Ok(())
    }

    // -------------------------------------------------------------- typing

    async fn typing(&self, client: &Client, payload: &[u8]) {
        let me = client.user.as_str();
        // Typing is fire-and-forget (QoS 0): a bad indicator is dropped without an answer.
        let Ok(req) = decode_typing(payload, &self.limits) else {
            return;
        };
        if !self.typing.allow(&client.user) {
            // Typing is best effort: over the limit it is dropped without an answer.
            return;
        }
        let Some(conv) = req.to.conv(me) else { return };
        let out = TypingOut {
            conv,
            from: me.to_owned(),
            state: req.state,
        };
        match &req.to {
            Target::User(peer) => {
                let mut d = Delivery::qos1(user_in_topic(peer, InKind::Typing), self.encode(&out));
                d.qos = 0;
                self.registry.deliver_user(peer, &d);
            }
            Target::Group(gid) => {
                if matches!(self.is_member(gid, me).await, Ok(true)) {
                    self.to_group(gid, GroupKind::Typing, &out, 0);
                }
            }
        }
        self.activity(me, false).await;
    }

    // ----------------------------------------------------------------- rpc

    async fn rpc(&self, client: &Client, payload: &[u8], reply: ReplyProps) {
        let me = client.user.as_str();
        let response = match decode_rpc(payload, &self.limits) {
            Err(e) => {
                metrics::counter!(m::CHAT_ERRORS, "code" => e.error.code.as_str()).increment(1);
                RpcResponse::err(e.rid, e.error)
            }
            Ok(req) => match self.run_rpc(me, req.op).await {
                Ok(result) => RpcResponse::ok(req.rid, result),
                Err(e) => {
                    metrics::counter!(m::CHAT_ERRORS, "code" => e.code.as_str()).increment(1);
                    RpcResponse::err(Some(req.rid), e)
                }
            },
        };
        let payload = self.encode(&response);
        // A 5.0 request may name its own response topic, inside the user's own in/ space.
        let own_in = protocol::user_in_prefix(me);
        let topic = match &reply.response_topic {
            Some(t) if client.v5 && t.starts_with(&own_in) && !t.contains(['+', '#']) => t.clone(),
            _ => user_in_topic(me, InKind::Rpc),
        };
        let mut d = Delivery::qos1(topic, payload);
        if client.v5 && reply.correlation_data.is_some() {
            d.props = Some(Box::new(rumqttd::protocol::PublishProperties {
                correlation_data: reply.correlation_data,
                ..Default::default()
            }));
        }
        if self
            .registry
            .deliver_conn(client.conn, &d, WhenFull::Disconnect)
            == Offer::Gone
        {
            // Not subscribed on this connection: any device of the user that listens gets it.
            self.registry.deliver_user(me, &d);
        }
    }

    async fn run_rpc(&self, me: &str, op: RpcOp) -> Result<RpcResult, ChatError> {
        match op {
            RpcOp::Conversations { limit, before } => {
                let rows = self.store.conversations(me, before, limit).await?;
                let conversations = rows
                    .iter()
                    .map(|s| ConversationOut::from_summary(me, s))
                    .collect::<Result<_, _>>()?;
                Ok(RpcResult::Conversations(ConversationsOut { conversations }))
            }
            RpcOp::History { conv, dir, limit } => {
                if !self.participant(&conv, me).await? {
                    return Err(ChatError::forbidden(format!("not a participant of {conv}")));
                }
                let started = Instant::now();
                let page = self.store.history(&conv, dir.into(), limit).await?;
                metrics::histogram!(m::STORE_LATENCY, "op" => "history")
                    .record(started.elapsed().as_secs_f64());
                let mut out = HistoryOut::from_page(&conv, &page)?;
                if let Some(peer) = conv.kind().and_then(|k| k.peer_of(me)) {
                    let c = self.store.cursors(peer, &conv).await?;
                    out.peer_delivered_up_to = Some(c.delivered_up_to);
                    out.peer_read_up_to = Some(c.read_up_to);
                }
                Ok(RpcResult::History(out))
            }
            RpcOp::GroupCreate { name, members } => {
                let ts = now_ms();
                let gid = format!("g{:x}", self.ids.next(ts));
                let info = self
                    .store
                    .create_group(&gid, &name, me, &members, ts, self.group_max_members)
                    .await?;
                let mut everyone = self.store.members(&gid).await?;
                everyone.sort();
                let ev = EventOut {
                    kind: EventKind::GroupCreated,
                    gid: gid.clone(),
                    by: me.to_owned(),
                    users: everyone.clone(),
                    ts,
                    name: Some(name),
                };
                for u in &everyone {
                    self.to_user(u, InKind::Event, &ev);
                }
                self.to_group(&gid, GroupKind::Event, &ev, 1);
                Ok(RpcResult::Group(GroupInfoOut::from_info(
                    info,
                    Some(everyone),
                )))
            }
            RpcOp::GroupAdd { gid, users } => {
                self.require_admin(&gid, me).await?;
                let change = self
                    .store
                    .add_members(&gid, &users, now_ms(), self.group_max_members)
                    .await?;
                if !change.changed.is_empty() {
                    let ev = EventOut {
                        kind: EventKind::GroupAdded,
                        gid: gid.clone(),
                        by: me.to_owned(),
                        users: change.changed.clone(),
                        ts: now_ms(),
                        name: None,
                    };
                    for u in &change.changed {
                        self.to_user(u, InKind::Event, &ev);
                    }
                    self.to_group(&gid, GroupKind::Event, &ev, 1);
                }
                Ok(RpcResult::Membership(MembershipOut::of(&gid, change)))
            }
            RpcOp::GroupRemove { gid, users } => {
                self.require_admin(&gid, me).await?;
                let change = self.store.remove_members(&gid, &users).await?;
                self.after_removal(&gid, me, &change.changed, EventKind::GroupRemoved)
                    .await;
                Ok(RpcResult::Membership(MembershipOut::of(&gid, change)))
            }
            RpcOp::GroupLeave { gid } => {
                if !self.is_member(&gid, me).await? {
                    return Err(ChatError::not_found(format!("not a member of group {gid}")));
                }
                let change = self.store.remove_members(&gid, &[me.to_owned()]).await?;
                self.after_removal(&gid, me, &change.changed, EventKind::GroupLeft)
                    .await;
                Ok(RpcResult::Membership(MembershipOut::of(&gid, change)))
            }
            RpcOp::GroupInfo { gid } => {
                let info = self
                    .store
                    .group(&gid)
                    .await?
                    .ok_or_else(|| ChatError::not_found(format!("no group {gid}")))?;
                if !self.is_member(&gid, me).await? {
                    return Err(ChatError::forbidden(format!("not a member of group {gid}")));
                }
                let members = if info.member_count <= GROUP_INFO_MEMBERS_MAX {
                    let mut m = self.store.members(&gid).await?;
                    m.sort();
                    Some(m)
                } else {
                    None
                };
                Ok(RpcResult::Group(GroupInfoOut::from_info(info, members)))
            }
            RpcOp::GroupList => {
                let mut groups = Vec::new();
                for gid in self.store.groups_of(me).await? {
                    if let Some(info) = self.store.group(&gid).await? {
                        groups.push(GroupInfoOut::from_info(info, None));
                    }
                }
                Ok(RpcResult::Groups(GroupListOut { groups }))
            }
            RpcOp::ProfileSet(update) => {
                let p = self.store.set_profile(me, update.into()).await?;
                Ok(RpcResult::Profile(ProfileOut::from_profile(p, me)))
            }
            RpcOp::ProfileGet { users } => {
                let profiles = self
                    .store
                    .profiles(&users)
                    .await?
                    .into_iter()
                    .map(|p| ProfileOut::from_profile(p, me))
                    .collect();
                Ok(RpcResult::Profiles(ProfilesOut { profiles }))
            }
            RpcOp::PresenceGet { users } => {
                let mut presence = Vec::with_capacity(users.len());
                for p in self.store.profiles(&users).await? {
                    let out = self.presence_of(&p.user, p.hide_last_seen, p.last_seen, me);
                    presence.push(PresenceEntry {
                        user: p.user,
                        state: out.state,
                        last_seen: out.last_seen,
                    });
                }
                Ok(RpcResult::Presence(PresenceListOut { presence }))
            }
        }
    }

    async fn require_admin(&self, gid: &str, me: &str) -> Result<(), ChatError> {
        let info = self
            .store
            .group(gid)
            .await?
            .ok_or_else(|| ChatError::not_found(format!("no group {gid}")))?;
        if info.admins.iter().any(|a| a == me) {
            Ok(())
        } else {
            Err(ChatError::forbidden(format!(
                "only admins of group {gid} can change its members"
            )))
        }
    }

    /// Removed members stop receiving the group at once, then everyone concerned is told.
    async fn after_removal(&self, gid: &str, by: &str, removed: &[String], kind: EventKind) {
        if removed.is_empty() {
            return;
        }
        for u in removed {
            self.registry.drop_group_member(gid, u);
        }
        let ev = EventOut {
            kind,
            gid: gid.to_owned(),
            by: by.to_owned(),
            users: removed.to_vec(),
            ts: now_ms(),
            name: None,
        };
        for u in removed {
            self.to_user(u, InKind::Event, &ev);
        }
        self.to_group(gid, GroupKind::Event, &ev, 1);
    }

    fn presence_of(
        &self,
        user: &str,
        hide: bool,
        last_seen: Option<i64>,
        viewer: &str,
    ) -> PresenceOut {
        let state = if self.registry.is_online(user) {
            PresenceState::Online
        } else {
            PresenceState::Offline
        };
        let last_seen = if hide && user != viewer {
            None
        } else {
            last_seen
        };
        PresenceOut { state, last_seen }
    }

    /// `user`'s presence as everyone else sees it (connections + stored last seen).
    async fn current_presence(&self, user: &str) -> Result<PresenceOut, StoreError> {
        let profile = self.store.profiles(&[user.to_owned()]).await?.pop();
        let (hide, last_seen) = profile.map_or((false, None), |p| (p.hide_last_seen, p.last_seen));
        Ok(self.presence_of(user, hide, last_seen, ""))
    }

    async fn announce_presence(&self, user: &str) {
        // Without the store the state is still worth announcing, just without last seen.
        let out = match self.current_presence(user).await {
            Ok(out) => out,
            Err(_) => self.presence_of(user, false, None, ""),
        };
        let d = Delivery {
            topic: Bytes::from(presence_topic(user)),
            payload: self.encode(&out),
            qos: 1,
            retain: true,
            props: None,
        };
        self.registry.deliver_presence(user, &d);
    }

    /// Pushes `client.user`'s undelivered DMs to one connection, oldest first, a page at a
    /// time. This push is the connection's own backlog, so it is the one producer that waits
    /// for room in the queue (without ever closing the connection for it); what it cannot
    /// push stays pending for the next inbox subscribe.
    async fn push_offline(&self, client: &Client) {
        let page = self.offline_page;
        let mut after = 0u64;
        let mut pushed = 0u64;
        if let Ok(backlog) = self.store.pending_count(&client.user).await {
            metrics::histogram!(m::OFFLINE_BACKLOG).record(backlog as f64);
            if backlog == 0 {
                return;
            }
        }
        'pages: loop {
            let batch = match self.store.pending(&client.user, after, page).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "offline push: store error");
                    break;
                }
            };
            for msg in &batch {
                after = msg.id;
                let Ok(out) = MessageOut::from_stored(msg) else {
                    continue;
                };
                let d = Delivery::qos1(user_in_topic(&client.user, InKind::Msg), self.encode(&out));
                let mut stalled = Duration::ZERO;
                loop {
                    match self.registry.deliver_conn(client.conn, &d, WhenFull::Skip) {
                        Offer::Queued => break,
                        Offer::Gone => break 'pages,
                        Offer::Full if stalled >= OFFLINE_DRAIN_WAIT => {
                            debug!(pushed, "offline push: connection did not drain; stopping");
                            break 'pages;
                        }
                        Offer::Full => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            stalled += Duration::from_millis(5);
                        }
                    }
                }
                pushed += 1;
            }
            if batch.len() < page as usize {
                break;
            }
        }
        if pushed > 0 {
            metrics::counter!(m::OFFLINE_PUSHED).increment(pushed);
            debug!(pushed, "offline messages pushed");
        }
    }
}

/// The PUBACK refusal for a chat error answered on `in/ack`.
fn refusal_of(code: ErrorCode) -> Refusal {
    match code {
        ErrorCode::BadRequest | ErrorCode::TooLarge | ErrorCode::NotFound => {
            Refusal::PayloadFormatInvalid
        }
        ErrorCode::Unauthorized | ErrorCode::Forbidden => Refusal::NotAuthorized,
        ErrorCode::RateLimited => Refusal::QuotaExceeded,
        ErrorCode::Unavailable | ErrorCode::Internal => Refusal::Unavailable,
    }
}

#[async_trait]
impl ChatPlane for ChatService {
    async fn connected(&self, client: &Client) {
        if self.registry.connections_of(&client.user) == 1 {
            self.activity(&client.user, true).await;
            self.announce_presence(&client.user).await;
        }
    }

    async fn disconnected(&self, client: &Client, remaining: usize) {
        if remaining == 0 {
            self.activity(&client.user, true).await;
            self.last_seen_written.lock().remove(&client.user);
            self.announce_presence(&client.user).await;
        }
    }

    async fn publish(
        &self,
        client: &Client,
        topic: OutKind,
        payload: Bytes,
        reply: ReplyProps,
        turn: Turn,
    ) -> Result<(), Refusal> {
        if topic != OutKind::Typing && !self.messages.allow(&client.user) {
            let error = ChatError::rate_limited("too many messages; slow down");
            match topic {
                OutKind::Rpc => {
                    let rid = protocol::decode_rpc(&payload, &self.limits)
                        .ok()
                        .map(|r| r.rid);
                    let d = Delivery::qos1(
                        user_in_topic(&client.user, InKind::Rpc),
                        self.encode(&RpcResponse::<RpcResult>::err(rid, error)),
                    );
                    self.registry.deliver_user(&client.user, &d);
                }
                _ => {
                    let cid = decode_send(&payload, &self.limits).ok().map(|r| r.cid);
                    self.ack_error(&client.user, cid, error);
                }
            }
            return Err(Refusal::QuotaExceeded);
        }
        match topic {
            OutKind::Send => self.send(client, &payload, turn).await,
            OutKind::Receipt => self.receipt(client, &payload).await,
            OutKind::Typing => {
                self.typing(client, &payload).await;
                Ok(())
            }
            OutKind::Rpc => {
                // Answered on in/rpc, errors included: nothing to hold back.
                self.rpc(client, &payload, reply).await;
                Ok(())
            }
        }
    }

    fn publish_denied(&self, client: &Client, topic: &str) {
        self.ack_error(
            &client.user,
            None,
            ChatError::forbidden(format!("not allowed to publish to {topic}")),
        );
    }

    async fn may_subscribe_group(&self, user: &str, gid: &str) -> bool {
        matches!(self.store.is_member(gid, user).await, Ok(true))
    }

    async fn inbox_subscribed(&self, client: &Client) {
        self.push_offline(client).await;
    }

    async fn presence(&self, user: &str) -> Option<Bytes> {
        let out = self.current_presence(user).await.ok()?;
        Some(self.encode(&out))
    }
}
