//! chatmq: an MQTT broker with chat built in.
//!
//! # Layout
//! - `store`: persistence in chat terms (`Store` trait), SQLite and ScyllaDB backends.
//! - `protocol`: chat topic names, payload types, MessagePack/JSON codec (pure).

pub mod protocol;
pub mod store;
