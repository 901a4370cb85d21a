//! Assembles a running broker from a config: store, chat service, engine, listeners, HTTP.
//! `main.rs` and the end-to-end tests both start chatmq through [`Server::start`].

use crate::broker::{self, BoundAddrs, BrokerState};
use crate::chat::ChatService;
use crate::config::Config;
use crate::store::{self, Store};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Broker(#[from] broker::BrokerError),
    #[error("chat: {0}")]
    Chat(String),
    #[error("http listener {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running broker. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub mqtt: BoundAddrs,
    pub http: Option<SocketAddr>,
    pub state: Arc<BrokerState>,
    store: Arc<dyn Store>,
    stop: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
}

impl Server {
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let metrics = crate::metrics::install();
        for w in config.store.durability_warnings() {
            tracing::warn!("{w}");
        }
        let store = store::open(&config.store).await?;
        let (stop, stopped) = watch::channel(false);
        let registry = broker::registry::Registry::new();
        let health = crate::health::Health::new();
        crate::health::watch_store(health.clone(), store.clone(), stopped.clone());
        let chat = ChatService::new(&config, store.clone(), registry.clone(), health.clone())
            .map_err(StartError::Chat)?;
        let chat = Arc::new(chat);
        let state = BrokerState::new(config.clone(), chat.clone(), registry, stopped.clone())?;
        let ready = Arc::new(AtomicBool::new(false));
        let http = match config.http.listen {
            Some(addr) => Some(
                crate::http::start(
                    addr,
                    metrics,
                    ready.clone(),
                    health.clone(),
                    stopped.clone(),
                )
                .await
                .map_err(|source| StartError::Http { addr, source })?,
            ),
            None => None,
        };
        let mqtt = broker::listen(state.clone()).await?;
        // Persistent sessions expire, and idle throttle and rate-limit entries go, in the
        // background.
        let (sweep_state, sweep_chat) = (state.clone(), chat.clone());
        let mut sweep_stop = stopped;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let saved = sweep_state.sessions.sweep();
                        metrics::gauge!(crate::metrics::SAVED_SESSIONS).set(saved as f64);
                        sweep_state.auth_throttle.sweep();
                        sweep_chat.sweep();
                    }
                    _ = async { let _ = sweep_stop.wait_for(|s| *s).await; } => break,
                }
            }
        });
        ready.store(true, Ordering::Release);
        info!(mqtt = ?mqtt.tcp, tls = ?mqtt.tls, ws = ?mqtt.websocket, http = ?http, "chatmq ready");
        Ok(Server {
            mqtt,
            http,
            state,
            store,
            stop,
            ready,
        })
    }

    /// Stops accepting, closes every connection, flushes the store.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        // Connections see the signal and run their cleanup (presence, sessions).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.state.registry.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "store flush on shutdown failed");
        }
        info!("chatmq stopped");
    }
}
