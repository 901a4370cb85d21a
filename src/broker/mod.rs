//! The MQTT connection layer: listeners, one task per connection, the chat-plane router and
//! the bridge to the embedded rumqttd engine.
//!
//! Data flows one way: socket → `conn` (auth, ACL, stamping) → chat plane (`ChatPlane`) or
//! engine (general plane) → deliveries back through `registry` / the connection's link.

pub mod codec;
pub mod conn;
pub mod engine;
pub mod registry;
pub mod sessions;
pub mod throttle;
pub mod transport;

use crate::acl::Acl;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::protocol::OutKind;
use async_trait::async_trait;
use bytes::Bytes;
use codec::ReplyProps;
use registry::{ConnId, Registry};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

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

/// One link of a connection's chain of sends (see [`ChatPlane::publish`]). Dropping it passes
/// the turn, so an early error never blocks the messages behind it.
#[derive(Debug, Default)]
pub struct Turn {
    prev: Option<tokio::sync::oneshot::Receiver<()>>,
    next: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Turn {
    /// A turn that waits for `prev` (if any) and is followed by the returned receiver.
    pub fn chained(
        prev: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> (Turn, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Turn {
                prev,
                next: Some(tx),
            },
            rx,
        )
    }

    /// Waits until every earlier send of the connection has reached the store.
    pub async fn wait(&mut self) {
        if let Some(prev) = self.prev.take() {
            // An error means the earlier send was dropped: its turn is over either way.
            let _ = prev.await;
        }
    }

    /// Lets the next send go.
    pub fn pass(&mut self) {
        if let Some(next) = self.next.take() {
            let _ = next.send(());
        }
    }
}

/// What the connection layer asks of the chat layer.
#[async_trait]
pub trait ChatPlane: Send + Sync + 'static {
    /// A device of `client.user` connected (the user may already have others).
    async fn connected(&self, client: &Client);

    /// A device disconnected; `remaining` is how many the user still has.
    async fn disconnected(&self, client: &Client, remaining: usize);

    /// A publish on one of the user's own `out/` topics. Resolves once handled; the
    /// connection PUBACKs the client then, in arrival order. `Ok` only when what the publish
    /// asked to store (a message, a receipt) is durably stored: the PUBACK is the promise.
    /// `turn` orders the sends of one connection: the chat layer waits for it before it
    /// hands a message to the store and passes it on right after, so a client's messages get
    /// seqs in the order it published them while their commits still overlap.
    async fn publish(
        &self,
        client: &Client,
        topic: OutKind,
        payload: Bytes,
        reply: ReplyProps,
        turn: Turn,
    ) -> Result<(), Refusal>;

    /// A 3.1.1 client published where it may not: it gets an `in/ack` error instead of the
    /// 5.0 PUBACK reason code. Never waits.
    fn publish_denied(&self, client: &Client, topic: &str);

    /// May `user` subscribe to group `gid`'s topics (is a member)?
    async fn may_subscribe_group(&self, user: &str, gid: &str) -> bool;

    /// The connection subscribed to a filter covering its inbox: start offline delivery.
    async fn inbox_subscribed(&self, client: &Client);

    /// Current retained presence payload of `user`, sent right after a SUBSCRIBE to
    /// `chat/p/{user}`.
    async fn presence(&self, user: &str) -> Option<Bytes>;
}

/// Everything a connection task needs, shared.
pub struct BrokerState {
    pub config: Config,
    pub auth: Authenticator,
    pub acl: Acl,
    pub registry: Arc<Registry>,
    pub engine: engine::Engine,
    pub sessions: sessions::Sessions,
    pub chat: Arc<dyn ChatPlane>,
    /// One permit per open connection (`mqtt.max_connections`), taken at accept.
    pub connection_slots: Arc<Semaphore>,
    /// Failed logins per source address.
    pub auth_throttle: throttle::AuthThrottle,
    /// One permit per 5.0 will waiting for its delay (`mqtt.max_connections`).
    pub will_slots: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error("engine: {0}")]
    Engine(String),
    #[error("auth key: {0}")]
    Key(#[from] crate::auth::KeyError),
}

/// Addresses the listeners actually bound (port 0 resolved).
#[derive(Clone, Debug, Default)]
pub struct BoundAddrs {
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub websocket: Option<SocketAddr>,
}

impl BrokerState {
    pub fn new(
        config: Config,
        chat: Arc<dyn ChatPlane>,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<BrokerState>, BrokerError> {
        let auth = Authenticator::new(&config.auth)?;
        let acl = Acl::new(config.acl.clone());
        let engine = engine::Engine::start(&config.engine)
            .map_err(|e| BrokerError::Engine(e.to_string()))?;
        let slots = Arc::new(Semaphore::new(config.mqtt.max_connections));
        let auth_throttle = throttle::AuthThrottle::new(
            config.auth.failures_per_minute,
            config.auth.failures_burst,
        );
        Ok(Arc::new(BrokerState {
            auth,
            acl,
            registry,
            engine,
            sessions: sessions::Sessions::default(),
            chat,
            connection_slots: slots,
            auth_throttle,
            will_slots: Arc::new(Semaphore::new(config.mqtt.max_connections)),
            shutdown,
            config,
        }))
    }
}

/// Binds every configured listener and serves until shutdown.
pub async fn listen(state: Arc<BrokerState>) -> Result<BoundAddrs, BrokerError> {
    transport::start(state).await
}
