//! Messaging semantics: send, receipts, typing, offline delivery, groups, presence, rpc.
//!
//! The connection layer attaches each authenticated client ([`ChatPlane::attach`]) and hands
//! its chat publishes and chat filters to the [`ChatSession`] it gets back (`session.rs`);
//! the service validates, persists through the `Store`, answers on the sender's `in/` topics
//! and fans out through the chat-plane registry.

mod catchup;
mod convert;
mod groups;
pub mod ids;
mod presence;
pub mod rate;
mod receipts;
mod rpc;
mod send;
mod session;

use crate::broker::codec::ReplyProps;
use crate::broker::registry::{Delivery, Offer, Registry, WhenFull};
use crate::broker::{ChatPlane, ChatSession, Client, Refusal};
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
use crate::store::{Appended, ConvId, ConvKind, NewMessage, Store, StoreError, StoredMessage};
use async_trait::async_trait;
use bytes::Bytes;
use ids::{now_ms, IdGenerator};
use parking_lot::Mutex;
use rate::UserLimiter;
use serde::Serialize;
use session::{Session, Turn};
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
        let limits = c.limits();
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
    async fn attach(self: Arc<Self>, client: Client) -> Box<dyn ChatSession> {
        if self.registry.connections_of(&client.user) == 1 {
            self.activity(&client.user, true).await;
            self.announce_presence(&client.user).await;
        }
        Box::new(Session::new(self, client))
    }

    async fn detached(&self, client: &Client, remaining: usize) {
        if remaining == 0 {
            self.activity(&client.user, true).await;
            self.last_seen_written.lock().remove(&client.user);
            self.announce_presence(&client.user).await;
        }
    }
}

impl ChatService {
    /// A publish on one of `client`'s `out/` topics (see [`ChatSession::publish`]). `turn`
    /// orders the sends of one connection: a send waits for it before it hands its message
    /// to the store and passes it on right after, so a client's messages get seqs in the
    /// order it published them while their commits still overlap.
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
}
