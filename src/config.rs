//! `broker.toml` plus `CHATMQ_*` environment overrides, validated once at startup.
//!
//! Environment overrides name a key path with `__` between levels, e.g.
//! `CHATMQ_MQTT__LISTEN=0.0.0.0:1883` or `CHATMQ_AUTH__SECRET=...`. Values that parse as a
//! number, boolean, array (`[a, b]`) or dict (`{k = v}`) are taken as such, anything else as
//! a string. Variables without `__` (e.g. `CHATMQ_SCYLLA_NODES`, used by tests) are not
//! overrides. Merging and typing are figment's.

use crate::acl::AclRule;
use crate::store::StoreConfig;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub chat: ChatConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub acl: Vec<AclRule>,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Plain TCP listener (MQTT 3.1.1 and 5.0 on one port).
    pub listen: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub websocket: Option<WebSocketConfig>,
    /// Largest MQTT packet accepted (bytes). Larger than `chat.max_payload` on purpose, so an
    /// oversized chat payload gets a `too_large` answer instead of a dropped connection.
    pub max_packet_size: usize,
    pub max_connections: usize,
    /// Time allowed between accepting a socket and receiving CONNECT.
    pub connect_timeout_ms: u64,
    /// Outgoing QoS 1 chat deliveries in flight per connection (capped by the client's
    /// receive maximum).
    pub max_inflight: u16,
    /// Queued chat deliveries per connection; a connection whose queue is full when a QoS 1
    /// delivery arrives is closed as too slow (it catches up from the store).
    pub outbound_queue: usize,
    /// The same bound in bytes (topic + payload + 64 per delivery).
    pub outbound_queue_bytes: usize,
    /// A connection whose socket takes no bytes for this long is closed as too slow.
    pub write_timeout_ms: u64,
    /// Time allowed to receive the rest of a packet once its first byte arrived.
    pub packet_timeout_ms: u64,
    /// Upper bound for a client's keep-alive (seconds), also applied to keep-alive 0 (5.0
    /// clients are told through Server Keep Alive); 0 = no bound.
    pub max_keep_alive_secs: u16,
    /// Subscriptions (chat and general, presence watches included) one connection may hold.
    pub max_subscriptions: usize,
    /// Connections one user may have open at once.
    pub max_sessions_per_user: usize,
    /// How long a persistent session (3.1.1 clean_session = false, or 5.0 session expiry)
    /// is kept after its connection ends, at most.
    pub max_session_expiry_secs: u32,
    /// Persistent sessions kept for one user's offline client ids; saving one more drops the
    /// user's oldest.
    pub max_saved_sessions_per_user: usize,
    /// Persistent sessions kept in all (anonymous ones included); past it, a closing
    /// connection's session is not kept.
    pub max_saved_sessions: usize,
    /// Topic aliases a 5.0 client may use towards the server.
    pub topic_alias_max: u16,
}

/// Chat deliveries use packet ids above the engine's 1..=100, so at most this many can be
/// in flight on one connection.
pub const MAX_INFLIGHT: u16 = u16::MAX - 101;

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls: None,
            websocket: None,
            max_packet_size: 1024 * 1024,
            max_connections: 100_000,
            connect_timeout_ms: 5_000,
            max_inflight: 100,
            outbound_queue: 4_096,
            outbound_queue_bytes: 4 * 1024 * 1024,
            write_timeout_ms: 15_000,
            packet_timeout_ms: 30_000,
            max_keep_alive_secs: 300,
            max_subscriptions: 1_000,
            max_sessions_per_user: 16,
            max_session_expiry_secs: 7 * 24 * 3600,
            max_saved_sessions_per_user: 16,
            max_saved_sessions: 200_000,
            topic_alias_max: 64,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    pub listen: SocketAddr,
    /// HTTP path of the MQTT endpoint.
    #[serde(default = "default_ws_path")]
    pub path: String,
}

fn default_ws_path() -> String {
    "/mqtt".to_owned()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `/metrics`, `/healthz`, `/readyz`. Unset = no HTTP listener.
    pub listen: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    #[default]
    HS256,
    HS384,
    HS512,
    RS256,
    ES256,
    EdDSA,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The only algorithm accepted; never taken from the token.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// Shared secret for HS*.
    pub secret: Option<String>,
    /// PEM public key file for RS256/ES256/EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// PEM private key file, only used by `chatmq token` with an asymmetric algorithm.
    pub private_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, seconds.
    pub leeway_secs: u64,
    /// Accept connections without credentials (general plane only; chat topics need a user).
    pub allow_anonymous: bool,
    /// Failed logins allowed per source address per minute (after the burst); more are
    /// closed before any token is looked at.
    pub failures_per_minute: u32,
    /// Failed logins a source address may have at once before throttling starts.
    pub failures_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key_file: None,
            private_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 5,
            allow_anonymous: false,
            failures_per_minute: 60,
            failures_burst: 20,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Encoding of server-published payloads: "msgpack" or "json".
    pub encoding: String,
    pub max_payload: usize,
    pub max_text: usize,
    pub max_cid: usize,
    pub group_max_members: u64,
    /// Group receipts are forwarded on the group topic only up to this many members.
    pub group_receipts_max: u64,
    /// Sustained messages per second per user (send + receipt + rpc).
    pub rate_per_sec: f64,
    /// Burst allowance per user.
    pub rate_burst: f64,
    /// Typing indicators per second per user.
    pub typing_per_sec: f64,
    /// Offline DMs pushed per page when an inbox is subscribed.
    pub offline_page: u32,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            encoding: "msgpack".to_owned(),
            max_payload: 64 * 1024,
            max_text: 16 * 1024,
            max_cid: 64,
            group_max_members: 50_000,
            group_receipts_max: 256,
            rate_per_sec: 50.0,
            rate_burst: 200.0,
            typing_per_sec: 2.0,
            offline_page: 100,
        }
    }
}

impl ChatConfig {
    /// The payload limits these settings give (checked by [`crate::protocol::Limits::check`]).
    pub fn limits(&self) -> crate::protocol::Limits {
        crate::protocol::Limits {
            max_payload: self.max_payload,
            max_text: self.max_text,
            max_cid: self.max_cid,
        }
    }
}

/// Sizes of the embedded rumqttd router that serves the general (non-chat) plane.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Local links (connections that used a general topic) the router holds at once.
    pub max_connections: usize,
    /// Packets buffered per link before the router pauses it.
    pub max_outgoing_packet_count: u64,
    /// Bytes per log segment of a filter.
    pub max_segment_size: usize,
    /// Segments kept per filter.
    pub max_segment_count: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_connections: 50_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 4,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directive (overridden by `RUST_LOG`).
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

impl Config {
    /// Reads `path`, applies the process environment's `CHATMQ_*` overrides, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, std::env::vars(), base)
    }

    /// Parses a config from text plus overrides (`(name, value)` pairs as in the environment).
    /// Relative file paths in the config are resolved against `base`.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        base: &Path,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(text));
        // Which variable set which key, to name it when its value is refused.
        let mut set_by: Vec<(String, String)> = Vec::new();
        for (name, value) in env {
            // Names without `__` (CHATMQ_CONFIG, CHATMQ_SCYLLA_NODES, …) are not overrides.
            let Some(path) = name.strip_prefix("CHATMQ_").filter(|p| p.contains("__")) else {
                continue;
            };
            let key = path
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            // Numbers, booleans, arrays and dicts are taken as such, anything else as a
            // string, so secrets and addresses need no quoting.
            let value: Value = value.parse().unwrap_or_else(|e| match e {});
            figment = figment.merge(Serialized::default(&key, value));
            set_by.push((key, name));
        }
        let mut config: Config = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            match set_by.iter().rev().find(|(k, _)| *k == key) {
                Some((_, name)) => invalid(&format!("{name} (environment)"), e.kind.to_string()),
                None if key.is_empty() => ConfigError::Parse(format!("broker config: {}", e.kind)),
                None => ConfigError::Parse(format!("broker config: {key}: {}", e.kind)),
            }
        })?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(tls) = &mut self.mqtt.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(p) = &mut self.auth.public_key_file {
            fix(p);
        }
        if let Some(p) = &mut self.auth.private_key_file {
            fix(p);
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_mqtt()?;
        self.validate_auth()?;
        self.validate_chat()?;
        self.validate_engine()?;
        // The store's messages already start with the key (`store.<key>: reason`).
        self.store.validate().map_err(ConfigError::Parse)?;
        for (i, rule) in self.acl.iter().enumerate() {
            rule.validate()
                .map_err(|reason| invalid(&format!("acl[{i}].topic"), reason))?;
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        Ok(())
    }

    fn validate_mqtt(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if m.max_packet_size < 1024 {
            return Err(invalid("mqtt.max_packet_size", "must be at least 1024"));
        }
        if m.max_packet_size <= self.chat.max_payload {
            return Err(invalid(
                "mqtt.max_packet_size",
                "must be larger than chat.max_payload (so oversized chat payloads get an error answer)",
            ));
        }
        if m.max_connections == 0 {
            return Err(invalid("mqtt.max_connections", "must be at least 1"));
        }
        if m.max_inflight == 0 || m.max_inflight > MAX_INFLIGHT {
            return Err(invalid(
                "mqtt.max_inflight",
                format!("must be between 1 and {MAX_INFLIGHT}"),
            ));
        }
        if m.outbound_queue < 16 {
            return Err(invalid("mqtt.outbound_queue", "must be at least 16"));
        }
        if m.outbound_queue_bytes < 4096 {
            return Err(invalid(
                "mqtt.outbound_queue_bytes",
                "must be at least 4096",
            ));
        }
        for (key, ms) in [
            ("mqtt.write_timeout_ms", m.write_timeout_ms),
            ("mqtt.packet_timeout_ms", m.packet_timeout_ms),
            ("mqtt.connect_timeout_ms", m.connect_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                return Err(invalid(key, "must be between 100 and 3600000 (ms)"));
            }
        }
        if m.max_subscriptions == 0 {
            return Err(invalid("mqtt.max_subscriptions", "must be at least 1"));
        }
        if m.max_sessions_per_user == 0 {
            return Err(invalid("mqtt.max_sessions_per_user", "must be at least 1"));
        }
        if m.max_saved_sessions_per_user == 0 || m.max_saved_sessions == 0 {
            return Err(invalid(
                "mqtt.max_saved_sessions_per_user",
                "max_saved_sessions_per_user and max_saved_sessions must be at least 1",
            ));
        }
        if let Some(ws) = &m.websocket {
            if !ws.path.starts_with('/') {
                return Err(invalid("mqtt.websocket.path", "must start with '/'"));
            }
        }
        Ok(())
    }

    fn validate_chat(&self) -> Result<(), ConfigError> {
        let c = &self.chat;
        if !matches!(c.encoding.as_str(), "msgpack" | "json") {
            return Err(invalid("chat.encoding", "must be \"msgpack\" or \"json\""));
        }
        c.limits()
            .check()
            .map_err(|(key, reason)| invalid(&format!("chat.{key}"), reason))?;
        if c.group_max_members < 2 {
            return Err(invalid("chat.group_max_members", "must be at least 2"));
        }
        if c.rate_per_sec.is_nan() || c.rate_per_sec <= 0.0 || c.rate_per_sec.is_infinite() {
            return Err(invalid("chat.rate_per_sec", "must be a positive number"));
        }
        if c.rate_burst < 1.0 || !c.rate_burst.is_finite() {
            return Err(invalid("chat.rate_burst", "must be at least 1"));
        }
        if c.typing_per_sec.is_nan() || c.typing_per_sec <= 0.0 || c.typing_per_sec.is_infinite() {
            return Err(invalid("chat.typing_per_sec", "must be a positive number"));
        }
        if c.offline_page == 0 || c.offline_page > 1000 {
            return Err(invalid("chat.offline_page", "must be between 1 and 1000"));
        }
        Ok(())
    }

    fn validate_engine(&self) -> Result<(), ConfigError> {
        let e = &self.engine;
        if e.max_connections == 0 {
            return Err(invalid("engine.max_connections", "must be at least 1"));
        }
        if e.max_segment_size < 1024 {
            return Err(invalid("engine.max_segment_size", "must be at least 1024"));
        }
        if e.max_segment_count == 0 {
            return Err(invalid("engine.max_segment_count", "must be at least 1"));
        }
        if e.max_outgoing_packet_count == 0 {
            return Err(invalid(
                "engine.max_outgoing_packet_count",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if a.failures_per_minute == 0 || a.failures_burst == 0 {
            return Err(invalid(
                "auth.failures_per_minute",
                "failures_per_minute and failures_burst must be at least 1",
            ));
        }
        match a.algorithm {
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => match &a.secret {
                None => Err(invalid("auth.secret", "required for an HS* algorithm")),
                Some(s) if s.len() < 16 => Err(invalid(
                    "auth.secret",
                    "must be at least 16 bytes (32 or more recommended)",
                )),
                Some(_) => Ok(()),
            },
            _ => match &a.public_key_file {
                None => Err(invalid(
                    "auth.public_key_file",
                    "required for RS256/ES256/EdDSA",
                )),
                Some(p) if !p.is_file() => Err(invalid(
                    "auth.public_key_file",
                    format!("{} is not a readable file", p.display()),
                )),
                Some(_) => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [auth]
        secret = "0123456789abcdef0123456789abcdef"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml(text, env, Path::new("."))
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let c = load(MINIMAL, &[]).expect("valid");
        assert_eq!(c.mqtt.listen, SocketAddr::from(([127, 0, 0, 1], 1883)));
        assert_eq!(c.chat.group_max_members, 50_000);
        assert!(!c.auth.allow_anonymous);
    }

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let c = load(
            MINIMAL,
            &[
                ("CHATMQ_MQTT__LISTEN", "0.0.0.0:11883"),
                ("CHATMQ_CHAT__GROUP_MAX_MEMBERS", "10"),
                ("CHATMQ_AUTH__ALLOW_ANONYMOUS", "true"),
                ("CHATMQ_SCYLLA_NODES", "ignored"),
                ("HOME", "/root"),
            ],
        )
        .expect("valid");
        assert_eq!(c.mqtt.listen.port(), 11883);
        assert_eq!(c.chat.group_max_members, 10);
        assert!(c.auth.allow_anonymous);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = load(MINIMAL, &[("CHATMQ_CHAT__ENCODING", "xml")]).expect_err("invalid");
        assert!(err.to_string().starts_with("chat.encoding:"), "{err}");

        let err = load("[auth]\nsecret = \"short\"", &[]).expect_err("invalid");
        assert!(err.to_string().starts_with("auth.secret:"), "{err}");

        let err = load("[auth]\nalgorithm = \"RS256\"", &[]).expect_err("invalid");
        assert!(
            err.to_string().starts_with("auth.public_key_file:"),
            "{err}"
        );
        // The chat limits follow one rule: what validates here is what the chat service takes.
        let err = load(
            MINIMAL,
            &[
                ("CHATMQ_CHAT__MAX_TEXT", "900"),
                ("CHATMQ_CHAT__MAX_PAYLOAD", "1000"),
            ],
        )
        .expect_err("no room for the envelope");
        assert!(err.to_string().starts_with("chat.max_payload:"), "{err}");
        let ok = load(
            MINIMAL,
            &[
                ("CHATMQ_CHAT__MAX_TEXT", "100"),
                ("CHATMQ_CHAT__MAX_PAYLOAD", "600"),
            ],
        )
        .expect("a small payload limit with room for the envelope");
        assert!(ok.chat.limits().check().is_ok());
        // A value of the wrong type names the variable that set it.
        let err = load(MINIMAL, &[("CHATMQ_CHAT__GROUP_MAX_MEMBERS", "many")]).expect_err("type");
        assert!(
            err.to_string()
                .starts_with("CHATMQ_CHAT__GROUP_MAX_MEMBERS (environment):"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_take_strings() {
        let c = load(
            MINIMAL,
            &[
                (
                    "CHATMQ_AUTH__SECRET",
                    "abcdefghijklmnopqrstuvwxyz0123456789",
                ),
                ("CHATMQ_LOG__LEVEL", "debug"),
            ],
        )
        .expect("valid");
        assert_eq!(
            c.auth.secret.as_deref(),
            Some("abcdefghijklmnopqrstuvwxyz0123456789")
        );
        assert_eq!(c.log.level, "debug");
    }

    #[cfg(feature = "scylla")]
    #[test]
    fn env_overrides_take_arrays() {
        let c = load(
            MINIMAL,
            &[
                ("CHATMQ_STORE__BACKEND", "scylla"),
                (
                    "CHATMQ_STORE__NODES",
                    "[\"10.0.0.1:9042\", \"10.0.0.2:9042\"]",
                ),
            ],
        )
        .expect("valid");
        let crate::store::StoreConfig::Scylla(scylla) = c.store else {
            panic!("not scylla: {:?}", c.store);
        };
        assert_eq!(scylla.nodes, ["10.0.0.1:9042", "10.0.0.2:9042"]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = load(
            &format!("{MINIMAL}\n[mqtt]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3"),
            &[],
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn shipped_conformance_example_is_valid() {
        let c = load(include_str!("../examples/conformance.toml"), &[]).expect("valid");
        assert!(c.auth.allow_anonymous);
        assert_eq!(c.acl.len(), 2);
    }

    #[test]
    fn shipped_broker_toml_is_valid() {
        let text = include_str!("../broker.toml");
        load(text, &[]).expect("broker.toml must be valid as shipped");
    }
}
