//! chatmq: an MQTT broker with chat built in.
//!
//! # Layout
//! - `config`: `broker.toml` + `CHATMQ_*` overrides, validated once.
//! - `auth`: JWT verification and minting.
//! - `acl`: who may publish/subscribe where (pure).
//! - `broker`: listeners, the per-connection task, the chat-plane router and the embedded
//!   rumqttd engine for general topics.
//! - `store`: persistence in chat terms (`Store` trait), SQLite and ScyllaDB backends.
//! - `protocol`: chat topic names, payload types, MessagePack/JSON codec (pure).
//! - `metrics`: metric names and the Prometheus recorder.

pub mod acl;
pub mod auth;
pub mod broker;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod store;
