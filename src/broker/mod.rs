//! The MQTT connection layer: listeners, one task per connection, the chat-plane router and
//! the bridge to the embedded rumqttd engine.
//!
//! Data flows one way: socket → `conn` (auth, ACL) → chat plane (through the narrow
//! [`ChatPlane`]/[`ChatSession`] interface of `plane.rs`) or engine (general plane) →
//! deliveries back through `registry` / the connection's link.

pub mod codec;
pub mod conn;
pub mod engine;
mod plane;
pub mod registry;
pub mod sessions;
pub mod throttle;
pub mod transport;

use crate::acl::Acl;
use crate::auth::Authenticator;
use crate::config::Config;
pub use plane::{ChatPlane, ChatSession, ChatTask, Client, Refusal};
use registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

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
