//! Shared harness: a real broker on 127.0.0.1 ephemeral ports with a temp SQLite file,
//! driven by real MQTT clients (rumqttc 3.1.1 and 5.0).
#![allow(dead_code)]

use chatmq::config::Config;
use chatmq::server::Server;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

pub struct Broker {
    pub server: Option<Server>,
    pub port: u16,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &Path) -> Config {
    let text = format!(
        r#"
        [mqtt]
        listen = "127.0.0.1:0"
        [http]
        listen = "127.0.0.1:0"
        [auth]
        secret = "{SECRET}"
        [store]
        backend = "sqlite"
        path = "{}"
        [[acl]]
        topic = "test/nosubscribe"
        access = "read"
        permission = "deny"
        [[acl]]
        topic = "iot/%u/#"
        access = "readwrite"
        [[acl]]
        topic = "public/#"
        access = "readwrite"
        "#,
        dir.join("chatmq.db").display()
    );
    Config::from_toml(&text, std::iter::empty(), Path::new(".")).expect("test config")
}

impl Broker {
    pub async fn start() -> Broker {
        Broker::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        Broker::start_in(dir, cfg).await
    }

    pub async fn start_in(dir: tempfile::TempDir, cfg: Config) -> Broker {
        // CHATMQ_TEST_LOG=chatmq=debug shows the broker's logs while debugging a test.
        if let Ok(filter) = std::env::var("CHATMQ_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let server = Server::start(cfg.clone()).await.expect("broker starts");
        let port = server.mqtt.tcp.expect("tcp listener").port();
        Broker {
            server: Some(server),
            port,
            config: cfg,
            dir,
        }
    }

    /// Stops the broker and starts it again on the same data (a new port).
    pub async fn restart(mut self) -> Broker {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let mut cfg = self.config.clone();
        cfg.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
        Broker::start_in(self.dir, cfg).await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    pub fn token(&self, user: &str) -> String {
        token_ttl(&self.config, user, 3600)
    }
}

pub fn token_ttl(cfg: &Config, user: &str, ttl: u64) -> String {
    chatmq::auth::mint(&cfg.auth, user, Duration::from_secs(ttl)).expect("mint")
}

/// What a client saw: a packet or the event loop's error.
#[derive(Debug)]
pub enum Got<P> {
    Packet(P),
    Error(String),
}

pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Got<rumqttc::Packet>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn v4_options(port: u16, client_id: &str, creds: Option<(&str, &str)>) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    o
}

/// Connects and forwards everything the event loop yields; stops at the first error.
pub fn v4_connect(opts: rumqttc::MqttOptions) -> V4 {
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if tx.send(Got::Packet(p)).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Got::Error(format!("{e:?}")));
                    break;
                }
            }
        }
    });
    V4 { client, rx, task }
}

pub async fn v4_user(port: u16, b: &Broker, user: &str, device: &str) -> V4 {
    let token = b.token(user);
    let mut c = v4_connect(v4_options(port, device, Some((user, &token))));
    match next(&mut c.rx, 5).await {
        Some(Got::Packet(rumqttc::Packet::ConnAck(a)))
            if a.code == rumqttc::ConnectReturnCode::Success =>
        {
            c
        }
        other => panic!("{user} could not connect: {other:?}"),
    }
}

pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Got<rumqttc::v5::mqttbytes::v5::Packet>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn v5_options(
    port: u16,
    client_id: &str,
    creds: Option<(&str, &str)>,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    o
}

pub fn v5_connect(opts: rumqttc::v5::MqttOptions) -> V5 {
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p)) => {
                    if tx.send(Got::Packet(p)).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Got::Error(format!("{e:?}")));
                    break;
                }
            }
        }
    });
    V5 { client, rx, task }
}

pub async fn v5_user(port: u16, b: &Broker, user: &str, device: &str) -> V5 {
    let token = b.token(user);
    let mut c = v5_connect(v5_options(port, device, Some((user, &token))));
    match next(&mut c.rx, 5).await {
        Some(Got::Packet(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(a)))
            if a.code == rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success =>
        {
            c
        }
        other => panic!("{user} could not connect (v5): {other:?}"),
    }
}

/// The next item within `secs` seconds.
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, secs: u64) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .ok()
        .flatten()
}

/// Waits up to `secs` for an item matching `pred`, skipping others.
pub async fn wait_for<T, F: FnMut(&T) -> bool>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    secs: u64,
    mut pred: F,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(x)) if pred(&x) => return Some(x),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// Publishes received by a 3.1.1 client on `topic` within `secs`.
pub async fn v4_publish_on(c: &mut V4, topic: &str, secs: u64) -> Option<rumqttc::Publish> {
    match wait_for(
        &mut c.rx,
        secs,
        |g| matches!(g, Got::Packet(rumqttc::Packet::Publish(p)) if p.topic == topic),
    )
    .await
    {
        Some(Got::Packet(rumqttc::Packet::Publish(p))) => Some(p),
        _ => None,
    }
}

/// Subscribes at QoS 1 and returns the SUBACK's codes.
pub async fn v4_subscribe(c: &mut V4, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
    c.client
        .subscribe(filter, rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    v4_suback(c).await
}

pub async fn v4_suback(c: &mut V4) -> Vec<rumqttc::SubscribeReasonCode> {
    match wait_for(&mut c.rx, 5, |g| {
        matches!(g, Got::Packet(rumqttc::Packet::SubAck(_)))
    })
    .await
    {
        Some(Got::Packet(rumqttc::Packet::SubAck(s))) => s.return_codes,
        other => panic!("no SUBACK: {other:?}"),
    }
}

pub fn msgpack(v: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("msgpack")
}

pub fn unpack(bytes: &[u8]) -> serde_json::Value {
    rmp_serde::from_slice(bytes).expect("server payload is msgpack")
}
