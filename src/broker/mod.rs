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

/// Why a chat publish was not accepted (5.0 gets it as the PUBACK reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotAuthorized,
    QuotaExceeded,
    PayloadFormatInvalid,
    Unspecified,
}

/// What the connection layer asks of the chat layer.
#[async_trait]
pub trait ChatPlane: Send + Sync + 'static {
    /// A device of `client.user` connected (the user may already have others).
    async fn connected(&self, client: &Client);

    /// A device disconnected; `remaining` is how many the user still has.
    async fn disconnected(&self, client: &Client, remaining: usize);

    /// A publish on one of the user's own `out/` topics. Resolves once handled (for a send:
    /// durably stored and acknowledged on `in/ack`, or answered with an error there); the
    /// connection PUBACKs the client then.
    async fn publish(
        &self,
        client: &Client,
        topic: OutKind,
        payload: Bytes,
        reply: ReplyProps,
    ) -> Result<(), Refusal>;

    /// A 3.1.1 client published where it may not: it gets an `in/ack` error instead of the
    /// 5.0 PUBACK reason code.
    async fn publish_denied(&self, client: &Client, topic: &str);

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
    /// One permit per open connection (`mqtt.max_connections`).
    pub connection_slots: Arc<Semaphore>,
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
        Ok(Arc::new(BrokerState {
            auth,
            acl,
            registry,
            engine,
            sessions: sessions::Sessions::default(),
            chat,
            connection_slots: slots,
            shutdown,
            config,
        }))
    }
}

/// Binds every configured listener and serves until shutdown.
pub async fn listen(state: Arc<BrokerState>) -> Result<BoundAddrs, BrokerError> {
    transport::start(state).await
}
