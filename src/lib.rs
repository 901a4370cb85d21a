//! chatmq: an MQTT broker with chat built in.
//!
//! # Layout
//! - `config`: `broker.toml` + `CHATMQ_*` overrides, validated once.
//! - `auth`: JWT verification and minting.
//! - `acl`: who may publish/subscribe where (pure).
//! - `broker`: listeners, the per-connection task, the chat-plane router and the embedded
//!   rumqttd engine for general topics.
//! - `chat`: messaging semantics on top of the store and the chat-plane registry.
//! - `server`: assembles a running broker (used by `main` and the end-to-end tests).
//! - `health`: the store's write health behind `/readyz`, probed while it fails.
//! - `http`: `/metrics`, `/healthz`, `/readyz`.
//! - `store`: persistence in chat terms (`Store` trait), SQLite and ScyllaDB backends.
//! - `protocol`: chat topic names, payload types, MessagePack/JSON codec (pure).
//! - `metrics`: metric names and the Prometheus recorder.
//! - `topic`: MQTT topic/filter syntax and matching, panic-free on any string (pure).
//! - `clock`: wall-clock milliseconds and seconds since the epoch.

pub mod acl;
pub mod auth;
pub mod broker;
pub mod chat;
pub mod clock;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;
pub mod topic;
