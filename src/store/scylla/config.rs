//! `[store] backend = "scylla"`: connection, keyspace, consistency and layout settings.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The ScyllaDB backend's settings, as written under `[store]` in broker.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`. The driver discovers the rest of the cluster from them.
    pub nodes: Vec<String>,
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// Used only when the keyspace does not exist yet.
    #[serde(default)]
    pub replication: Replication,
    #[serde(default)]
    pub consistency: ConsistencyLevel,
    /// The datacenter the broker runs in: `LOCAL_*` consistency and load balancing prefer it.
    #[serde(default)]
    pub local_datacenter: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub tls: Option<ScyllaTls>,
    /// Client-side timeout of one request, retries included.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long a `(sender, cid)` is remembered for deduplication; 0 = forever.
    #[serde(default = "default_dedup_ttl_secs")]
    pub dedup_ttl_secs: u32,
    /// Messages per partition: bucket = seq / bucket_size. Fixed for the life of a keyspace.
    #[serde(default = "default_bucket_size")]
    pub bucket_size: u64,
}

fn default_keyspace() -> String {
    "chatmq".to_owned()
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

/// 30 days: far longer than any client retries a send.
fn default_dedup_ttl_secs() -> u32 {
    30 * 24 * 3600
}

/// With payloads capped at 64 KiB this bounds a partition to ~64 MB in the worst case;
/// typical chat messages keep it around 1 MB.
fn default_bucket_size() -> u64 {
    1_000
}

/// Keyspace replication, `class` tagged like CQL's replication map.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "class", deny_unknown_fields)]
pub enum Replication {
    /// Single datacenter, for development and tests.
    SimpleStrategy { replication_factor: u32 },
    /// Production: a replication factor per datacenter, e.g. `{ dc1 = 3 }`.
    NetworkTopologyStrategy { datacenters: BTreeMap<String, u32> },
}

impl Default for Replication {
    fn default() -> Self {
        Replication::SimpleStrategy {
            replication_factor: 1,
        }
    }
}

impl Replication {
    fn validate(&self) -> Result<(), String> {
        match self {
            Replication::SimpleStrategy { replication_factor } => {
                if *replication_factor == 0 {
                    return Err("store.replication.replication_factor: must be at least 1".into());
                }
            }
            Replication::NetworkTopologyStrategy { datacenters } => {
                if datacenters.is_empty() {
                    return Err(
                        "store.replication.datacenters: name at least one datacenter".into(),
                    );
                }
                for (dc, factor) in datacenters {
                    if !valid_dc_name(dc) {
                        return Err(format!(
                            "store.replication.datacenters: {dc:?} is not a datacenter name"
                        ));
                    }
                    if *factor == 0 {
                        return Err(format!(
                            "store.replication.datacenters.{dc}: must be at least 1"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The CQL replication map literal. Names are validated first, so they are safe to quote.
    pub(crate) fn to_cql(&self) -> String {
        match self {
            Replication::SimpleStrategy { replication_factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}")
            }
            Replication::NetworkTopologyStrategy { datacenters } => {
                let mut s = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, factor) in datacenters {
                    s.push_str(&format!(", '{dc}': {factor}"));
                }
                s.push('}');
                s
            }
        }
    }
}

/// The consistency level of every data statement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    One,
    LocalOne,
    Quorum,
    #[default]
    LocalQuorum,
    EachQuorum,
    All,
}

impl ConsistencyLevel {
    /// Whether reads and writes at this level overlap on at least one replica (R + W > RF),
    /// which seq seeding after a restart relies on.
    pub fn is_quorum_or_stronger(self) -> bool {
        !matches!(self, ConsistencyLevel::One | ConsistencyLevel::LocalOne)
    }
}

/// TLS to the cluster. Node certificates are checked against `ca_file`; the driver connects
/// by IP address, so node certificates must carry their IP in the subject alternative names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaTls {
    /// PEM bundle of the CAs that sign the nodes' certificates.
    pub ca_file: PathBuf,
    /// Client certificate chain (PEM), when the cluster requires client authentication.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl ScyllaConfig {
    /// A config with defaults for everything but the contact points.
    pub fn new(nodes: Vec<String>) -> ScyllaConfig {
        ScyllaConfig {
            nodes,
            keyspace: default_keyspace(),
            replication: Replication::default(),
            consistency: ConsistencyLevel::default(),
            local_datacenter: None,
            username: None,
            password: None,
            tls: None,
            request_timeout_ms: default_request_timeout_ms(),
            dedup_ttl_secs: default_dedup_ttl_secs(),
            bucket_size: default_bucket_size(),
        }
    }

    /// Settings that can lose a message after its sent ack went out.
    pub fn durability_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.consistency.is_quorum_or_stronger() {
            w.push(format!(
                "store.consistency = {:?}: a write is acknowledged by one replica, so losing \
                 that node can lose acknowledged messages; use LOCAL_QUORUM (the default)",
                self.consistency
            ));
        }
        w.push(
            "ScyllaDB nodes must run with commitlog_sync: batch for an acknowledged write to \
             survive a power loss (the server's default, periodic, syncs every 10 s); chatmq \
             cannot check this from the client"
                .into(),
        );
        w
    }

    /// Checks everything that can be checked without a cluster. The error names the key
    /// (relative to `[store]`) and the reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("store.nodes: at least one contact point is required".into());
        }
        for node in &self.nodes {
            let ok = node
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("store.nodes: {node:?} is not host:port"));
            }
        }
        if !valid_cql_identifier(&self.keyspace) {
            return Err(format!(
                "store.keyspace: {:?} must match [a-z_][a-z0-9_]{{0,47}}",
                self.keyspace
            ));
        }
        self.replication.validate()?;
        if let Some(dc) = &self.local_datacenter {
            if !valid_dc_name(dc) {
                return Err(format!(
                    "store.local_datacenter: {dc:?} is not a datacenter name"
                ));
            }
        }
        match (&self.username, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err("store.username: must not be empty".into())
            }
            (Some(_), None) => return Err("store.password: required with store.username".into()),
            (None, Some(_)) => return Err("store.username: required with store.password".into()),
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if !cfg!(feature = "scylla-tls") {
                return Err("store.tls: this build has no TLS for ScyllaDB; \
                            rebuild with `--features scylla-tls`"
                    .into());
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("store.tls.cert_file: cert_file and key_file go together".into());
            }
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > 600_000 {
            return Err("store.request_timeout_ms: must be between 1 and 600000".into());
        }
        // ScyllaDB caps TTLs at 20 years.
        if self.dedup_ttl_secs > 630_720_000 {
            return Err("store.dedup_ttl_secs: at most 630720000 (20 years); 0 = forever".into());
        }
        if self.bucket_size < 100 || self.bucket_size > 1_000_000 {
            return Err("store.bucket_size: must be between 100 and 1000000 \
                        (a history page must fit in two buckets)"
                .into());
        }
        Ok(())
    }
}

/// Unquoted CQL identifiers are case-insensitive; requiring lowercase keeps the name the
/// broker creates equal to the name it uses.
fn valid_cql_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && s.len() <= 48
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// Datacenter names end up inside a quoted CQL string literal, so no quotes or spaces.
fn valid_dc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ScyllaConfig, String> {
        toml::from_str::<ScyllaConfig>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_from_minimal_toml() {
        let c = parse(r#"nodes = ["127.0.0.1:9042"]"#).expect("parses");
        assert_eq!(c.keyspace, "chatmq");
        assert_eq!(c.consistency, ConsistencyLevel::LocalQuorum);
        assert_eq!(c.bucket_size, 1_000);
        assert_eq!(c.dedup_ttl_secs, 30 * 24 * 3600);
        assert_eq!(c.replication, Replication::default());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn full_toml_with_network_topology() {
        let c = parse(
            r#"
            nodes = ["10.0.0.1:9042", "scylla-2.internal:9042"]
            keyspace = "chat_prod"
            consistency = "quorum"
            local_datacenter = "eu-west"
            username = "chatmq"
            password = "secret"
            request_timeout_ms = 2000
            dedup_ttl_secs = 86400
            bucket_size = 5000
            [replication]
            class = "NetworkTopologyStrategy"
            datacenters = { eu-west = 3, us-east = 3 }
            "#,
        )
        .expect("parses");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.replication.to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us-east': 3}"
        );
        assert_eq!(c.consistency, ConsistencyLevel::Quorum);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(parse("nodes = [\"a:1\"]\nconsistancy = \"one\"")
            .unwrap_err()
            .contains("consistancy"));
        assert!(parse("nodes = [\"a:1\"]\n[replication]\nclass = \"SimpleStrategy\"\nreplication_factor = 1\nfoo = 2")
            .is_err());
        assert!(parse("nodes = [\"a:1\"]\nconsistency = \"serial\"").is_err());
    }

    #[test]
    fn simple_strategy_cql() {
        let r = Replication::SimpleStrategy {
            replication_factor: 3,
        };
        assert_eq!(
            r.to_cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
    }

    fn valid() -> ScyllaConfig {
        ScyllaConfig::new(vec!["127.0.0.1:9042".into()])
    }

    fn err_of(f: impl FnOnce(&mut ScyllaConfig)) -> String {
        let mut c = valid();
        f(&mut c);
        c.validate().expect_err("should be refused")
    }

    #[test]
    fn validation_names_the_key() {
        assert!(err_of(|c| c.nodes.clear()).starts_with("store.nodes:"));
        assert!(err_of(|c| c.nodes = vec!["localhost".into()]).starts_with("store.nodes:"));
        assert!(err_of(|c| c.nodes = vec![":9042".into()]).starts_with("store.nodes:"));
        assert!(err_of(|c| c.keyspace = "Chat".into()).starts_with("store.keyspace:"));
        assert!(err_of(|c| c.keyspace = "chat; DROP".into()).starts_with("store.keyspace:"));
        assert!(err_of(|c| c.keyspace = "1chat".into()).starts_with("store.keyspace:"));
        assert!(err_of(|c| {
            c.replication = Replication::SimpleStrategy {
                replication_factor: 0,
            }
        })
        .starts_with("store.replication.replication_factor:"));
        assert!(err_of(|c| {
            c.replication = Replication::NetworkTopologyStrategy {
                datacenters: BTreeMap::new(),
            }
        })
        .starts_with("store.replication.datacenters:"));
        assert!(err_of(|c| {
            c.replication = Replication::NetworkTopologyStrategy {
                datacenters: [("dc1'}".to_owned(), 3)].into(),
            }
        })
        .starts_with("store.replication.datacenters:"));
        assert!(err_of(|c| c.local_datacenter = Some("a b".into()))
            .starts_with("store.local_datacenter:"));
        assert!(err_of(|c| c.username = Some("u".into())).starts_with("store.password:"));
        assert!(err_of(|c| c.password = Some("p".into())).starts_with("store.username:"));
        assert!(err_of(|c| c.request_timeout_ms = 0).starts_with("store.request_timeout_ms:"));
        assert!(err_of(|c| c.dedup_ttl_secs = u32::MAX).starts_with("store.dedup_ttl_secs:"));
        assert!(err_of(|c| c.bucket_size = 10).starts_with("store.bucket_size:"));
    }

    #[test]
    fn tls_needs_the_feature_and_pairs() {
        let tls = ScyllaTls {
            ca_file: "ca.pem".into(),
            cert_file: Some("c.pem".into()),
            key_file: None,
        };
        let e = err_of(|c| c.tls = Some(tls));
        assert!(e.starts_with("store.tls"), "{e}");
    }

    #[test]
    fn chosen_by_the_store_section_tag() {
        #[derive(Deserialize)]
        struct File {
            store: crate::store::StoreConfig,
        }
        let f: File = toml::from_str(
            r#"
            [store]
            backend = "scylla"
            nodes = ["127.0.0.1:9042"]
            keyspace = "chatmq_dev"
            [store.replication]
            class = "SimpleStrategy"
            replication_factor = 1
            "#,
        )
        .expect("parses");
        match f.store {
            crate::store::StoreConfig::Scylla(c) => {
                assert_eq!(c.keyspace, "chatmq_dev");
                assert_eq!(c.validate(), Ok(()));
            }
            other => panic!("expected scylla, got {other:?}"),
        }
    }

    #[test]
    fn quorum_levels() {
        assert!(ConsistencyLevel::LocalQuorum.is_quorum_or_stronger());
        assert!(!ConsistencyLevel::One.is_quorum_or_stronger());
    }
}
