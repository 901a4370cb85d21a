//! The one interface between the connection layer and the chat plane. A connection knows
//! MQTT only; what a chat publish or a chat subscription means is the chat plane's business
//! (`src/chat/`). The connection gets a [`ChatSession`] when an authenticated client is
//! accepted and hands it every chat publish and chat filter, in arrival order.

use super::codec::ReplyProps;
use super::registry::ConnId;
use crate::acl::ChatFilter;
use crate::protocol::OutKind;
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The authenticated client behind a connection, as the chat layer sees it.
#[derive(Clone, Debug)]
pub struct Client {
    pub conn: ConnId,
    pub user: String,
    /// The client id as the client chose it (the part after `{user}:`).
    pub device: String,
    pub v5: bool,
}

/// Why a chat publish was not accepted. 5.0 gets it as the PUBACK/PUBREC reason code with
/// [`Refusal::reason`] as the reason string. 3.1.1 has no negative PUBACK: a refusal that
/// retrying cannot change ([`Refusal::is_final`]) is PUBACKed (the chat layer has answered
/// on `in/ack` with the cid), any other is not acknowledged and the connection is closed, so
/// the client's library sends the message again and `cid` dedup keeps it exactly-once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotAuthorized,
    /// Over the sender's rate limit (answered `rate_limited` on `in/ack`).
    QuotaExceeded,
    PayloadFormatInvalid,
    /// The store could not write it: nothing was stored, a retry may succeed.
    Unavailable,
    Unspecified,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotAuthorized => "not authorized",
            Refusal::QuotaExceeded => "rate limit exceeded; slow down",
            Refusal::PayloadFormatInvalid => "bad request; see in/ack",
            Refusal::Unavailable => "not stored: storage is not available right now; retry",
            Refusal::Unspecified => "not processed; retry",
        }
    }

    /// Whether sending the same message again cannot succeed (or is the client's decision,
    /// told on `in/ack`): bad payloads, permission, rate limits.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Refusal::NotAuthorized | Refusal::PayloadFormatInvalid | Refusal::QuotaExceeded
        )
    }
}

/// A chat publish in processing. It resolves once handled; `Ok` only when what the publish
/// asked to store (a message, a receipt) is durably stored: the PUBACK is the promise.
pub type ChatTask = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'static>>;

/// What the connection layer asks of the chat plane as a whole.
#[async_trait]
pub trait ChatPlane: Send + Sync + 'static {
    /// An authenticated client was accepted (the user may have other devices online): its
    /// chat side, owned by the connection until it closes.
    async fn attach(self: Arc<Self>, client: Client) -> Box<dyn ChatSession>;

    /// A device is gone; `remaining` is how many the user still has. Also called when a
    /// connection task panicked and its session object was lost with it.
    async fn detached(&self, client: &Client, remaining: usize);
}

/// One connection's chat side: everything it publishes or subscribes in the chat namespace.
#[async_trait]
pub trait ChatSession: Send + 'static {
    /// A publish on one of the user's own `out/` topics, called in arrival order. The task
    /// may be run later (the connection bounds how many run at once) and the connection
    /// acknowledges results in arrival order; the session keeps the order in which messages
    /// reach the store.
    fn publish(&mut self, kind: OutKind, payload: Bytes, reply: ReplyProps) -> ChatTask;

    /// A 3.1.1 client published where it may not: it gets an `in/ack` error instead of the
    /// 5.0 PUBACK reason code. Never waits.
    fn denied(&self, topic: &str);

    /// Adds a chat filter the ACL accepted; false when the user may not have it (not a
    /// member of the group). What it starts (offline delivery, retained presence) begins at
    /// [`ChatSession::settle`].
    async fn subscribe(&mut self, filter: &str, what: ChatFilter) -> bool;

    /// The SUBSCRIBE (or the restored session) is in place: starts offline delivery and
    /// retained presence for the filters added since the last call.
    fn settle(&mut self);

    /// Removes a chat filter; false when this connection did not hold it.
    fn unsubscribe(&mut self, filter: &str) -> bool;

    /// How many chat filters the connection holds, and whether it holds `filter`
    /// (for `mqtt.max_subscriptions`).
    fn held(&self) -> usize;
    fn holds(&self, filter: &str) -> bool;

    /// The connection is closing: stops its background work and returns the chat filters
    /// a persistent session keeps.
    fn end(self: Box<Self>) -> Vec<String>;
}
