//! Shared harness: a real broker on 127.0.0.1 ephemeral ports with a temp SQLite file,
//! driven by real MQTT clients (rumqttc 3.1.1 and 5.0).
#![allow(dead_code)]

use chatmq::config::Config;
use chatmq::server::Server;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub mod kill;

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

/// GET `path` from the broker's HTTP listener: the whole response, status line first.
pub async fn http_get(b: &Broker, path: &str) -> String {
    let http = b.server.as_ref().and_then(|s| s.http).expect("http");
    let mut s = tokio::net::TcpStream::connect(http).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
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

/// One MQTT packet: fixed header byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        v.push(byte);
        if len == 0 {
            break;
        }
    }
    v.extend_from_slice(body);
    v
}

/// An MQTT string or binary field: two-byte length, bytes.
pub fn field(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A CONNECT (`level` 4 = 3.1.1, 5 = 5.0) with clean session, user name and password.
pub fn connect_v(level: u8, user: &str, token: &str, id: &str, keep_alive: u16) -> Vec<u8> {
    connect_session(level, user, token, id, keep_alive, true)
}

/// A CONNECT with user name and password; `clean = false` asks for a persistent session
/// (5.0: Session Expiry Interval 3600 s).
pub fn connect_session(
    level: u8,
    user: &str,
    token: &str,
    id: &str,
    keep_alive: u16,
    clean: bool,
) -> Vec<u8> {
    let mut body = Vec::new();
    field(&mut body, b"MQTT");
    let flags = if clean { 0b1100_0010 } else { 0b1100_0000 };
    body.extend_from_slice(&[level, flags]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        if clean {
            body.push(0); // no properties
        } else {
            body.extend_from_slice(&[5, 0x11, 0, 0, 0x0e, 0x10]);
        }
    }
    for s in [id, user, token] {
        field(&mut body, s.as_bytes());
    }
    packet(0x10, &body)
}

/// A 3.1.1 CONNECT with a QoS 0 will on `will_topic`.
pub fn connect_with_will(user: &str, token: &str, id: &str, will_topic: &str) -> Vec<u8> {
    let mut body = Vec::new();
    field(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0b1100_0110, 0, 30]);
    for s in [id, will_topic, "bye", user, token] {
        field(&mut body, s.as_bytes());
    }
    packet(0x10, &body)
}

/// Every message of `conv` in the store, oldest first.
pub async fn all_messages(
    store: &dyn chatmq::store::Store,
    conv: &chatmq::store::ConvId,
) -> Vec<chatmq::store::StoredMessage> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .history(conv, chatmq::store::PageDir::After(after), 100)
            .await
            .expect("history");
        if let Some(last) = page.messages.last() {
            after = last.seq;
        }
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

/// A 3.1.1 CONNECT with clean session, keep-alive 30 s, user name and password.
pub fn connect_packet(user: &str, token: &str, id: &str) -> Vec<u8> {
    connect_v(4, user, token, id, 30)
}

/// A raw TCP connection to the broker from `source` (an address on 127/8, so tests can
/// act as distinct clients), with `hello` written.
pub async fn raw_from(source: &str, port: u16, hello: &[u8]) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    let mut s = sock
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    s.write_all(hello).await.expect("write");
    s
}

/// Reads the first bytes the broker answers with (the CONNACK), if any within `ms`.
pub async fn first_answer(s: &mut tokio::net::TcpStream, ms: u64) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(ms), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Whether the broker closes the socket within `secs` (whatever it sends first is read and
/// discarded).
pub async fn closed_within(s: &mut tokio::net::TcpStream, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Opens one raw TCP connection per entry of `sessions`, `concurrency` at a time: writes the
/// bytes, waits up to `read_ms` for an answer, closes.
pub async fn raw_sessions(port: u16, sessions: Vec<Vec<u8>>, concurrency: usize, read_ms: u64) {
    let mut tasks = Vec::new();
    for bytes in sessions {
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            let _ = s.write_all(&bytes).await;
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_millis(read_ms), s.read(&mut buf)).await;
        }));
        if tasks.len() >= concurrency {
            for t in tasks.drain(..) {
                let _ = t.await;
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A client speaking raw MQTT bytes, for checking the wire exactly (reason codes, reason
/// strings, what is and is not acknowledged).
pub struct Raw {
    pub s: tokio::net::TcpStream,
    pub level: u8,
    buf: Vec<u8>,
}

/// A packet as read: fixed header byte and body.
pub type RawPacket = (u8, Vec<u8>);

impl Raw {
    /// Connects as `user` (level 4 or 5) from `source` and returns the client and the
    /// CONNACK's body (`None`: no CONNACK).
    pub async fn connect(
        b: &Broker,
        source: &str,
        level: u8,
        user: &str,
        id: &str,
        keep_alive: u16,
    ) -> (Raw, Option<Vec<u8>>) {
        let token = b.token(user);
        let hello = connect_v(level, user, &token, id, keep_alive);
        Raw::hello(b, source, level, &hello).await
    }

    /// Connects as `user` from 127.0.0.1 asking for a persistent session; returns the
    /// client and the CONNACK's body.
    pub async fn persistent(b: &Broker, level: u8, user: &str, id: &str) -> (Raw, Option<Vec<u8>>) {
        let token = b.token(user);
        let hello = connect_session(level, user, &token, id, 30, false);
        Raw::hello(b, "127.0.0.1", level, &hello).await
    }

    /// Sends `hello` (a CONNECT) from `source` and reads the CONNACK.
    pub async fn hello(
        b: &Broker,
        source: &str,
        level: u8,
        hello: &[u8],
    ) -> (Raw, Option<Vec<u8>>) {
        let s = raw_from(source, b.port, hello).await;
        let mut raw = Raw {
            s,
            level,
            buf: Vec::new(),
        };
        let connack = match raw.next(5000).await {
            Some((0x20, body)) => Some(body),
            _ => None,
        };
        (raw, connack)
    }

    /// Connects to 127.0.0.1:`port` with a ready token; `None` unless the broker answered
    /// CONNACK success.
    pub async fn open(port: u16, level: u8, user: &str, token: &str, id: &str) -> Option<Raw> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(&connect_v(level, user, token, id, 30))
            .await
            .ok()?;
        let mut raw = Raw {
            s,
            level,
            buf: Vec::new(),
        };
        match raw.next(5000).await {
            Some((0x20, body)) if body.get(1) == Some(&0) => Some(raw),
            _ => None,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// The next whole packet within `ms`; `None` on timeout or close.
    pub async fn next(&mut self, ms: u64) -> Option<RawPacket> {
        self.poll(ms).await.ok().flatten()
    }

    /// The next whole packet within `ms`: `Ok(None)` on timeout, `Err(())` once the
    /// connection is closed.
    pub async fn poll(&mut self, ms: u64) -> Result<Option<RawPacket>, ()> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            if let Some((first, len, header)) = parse_header(&self.buf) {
                if self.buf.len() >= header + len {
                    let body = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Ok(Some((first, body)));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                Ok(_) => return Err(()),
                Err(_) => return Ok(None),
            }
        }
    }

    /// The next packet whose type (high nibble) is `kind`, skipping others (answering
    /// incoming QoS 1 publishes so the broker's window stays open).
    pub async fn next_of(&mut self, kind: u8, ms: u64) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (first, body) = self.next(left.as_millis() as u64).await?;
            if first >> 4 == kind {
                return Some(body);
            }
            if first >> 4 == 3 && (first >> 1) & 3 == 1 {
                if let Some(pkid) = publish_parts(self.level, first, &body).pkid {
                    self.send(&packet(0x40, &pkid)).await;
                }
            }
        }
    }

    pub fn publish_packet(&self, topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
        let mut body = Vec::new();
        field(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if self.level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        packet(0x30 | (qos << 1), &body)
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, pkid: u16) {
        let p = self.publish_packet(topic, payload, qos, pkid);
        self.send(&p).await;
    }

    pub async fn subscribe(&mut self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        self.try_subscribe(pkid, filters).await.expect("SUBACK")
    }

    /// The SUBACK's codes; `None` when none came (the connection went away).
    pub async fn try_subscribe(&mut self, pkid: u16, filters: &[&str]) -> Option<Vec<u8>> {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.level == 5 {
            body.push(0);
        }
        for f in filters {
            field(&mut body, f.as_bytes());
            body.push(1);
        }
        self.send(&packet(0x82, &body)).await;
        let ack = self.next_of(9, 5000).await?;
        Some(suback_codes(self.level, &ack))
    }
}

/// (first byte, remaining length, header length) once the fixed header is complete.
fn parse_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((first, len, 2 + i));
        }
    }
    None
}

/// A variable byte integer at `at`: (value, bytes used).
pub fn varint(b: &[u8], at: usize) -> (usize, usize) {
    let mut v = 0usize;
    for i in 0..4 {
        let byte = b.get(at + i).copied().unwrap_or(0);
        v |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (v, 4)
}

/// The return codes of a SUBACK body.
pub fn suback_codes(level: u8, body: &[u8]) -> Vec<u8> {
    let mut at = 2;
    if level == 5 {
        let (n, used) = varint(body, at);
        at += used + n;
    }
    body[at..].to_vec()
}

/// A 5.0 PUBACK/PUBREC body: (packet id, reason code, reason string).
pub fn ack_v5(body: &[u8]) -> (u16, u8, Option<String>) {
    let pkid = u16::from_be_bytes([body[0], body[1]]);
    let reason = body.get(2).copied().unwrap_or(0);
    let mut text = None;
    if body.len() > 3 {
        let (n, used) = varint(body, 3);
        let props = &body[3 + used..3 + used + n];
        let mut i = 0;
        while i < props.len() {
            let id = props[i];
            let len = u16::from_be_bytes([props[i + 1], props[i + 2]]) as usize;
            if id == 0x1F {
                text = Some(String::from_utf8_lossy(&props[i + 3..i + 3 + len]).into_owned());
            }
            i += 3 + len;
        }
    }
    (pkid, reason, text)
}

/// A 5.0 CONNACK's Server Keep Alive (property 0x13), if present.
pub fn server_keep_alive(connack: &[u8]) -> Option<u16> {
    let (n, used) = varint(connack, 2);
    let props = &connack[2 + used..2 + used + n];
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        let len = match id {
            0x13 | 0x21 | 0x22 => 2,
            0x11 | 0x27 => 4,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A | 0x17 | 0x19 | 0x01 => 1,
            0x26 => {
                let a = u16::from_be_bytes([props[i + 1], props[i + 2]]) as usize;
                let b = u16::from_be_bytes([props[i + 3 + a], props[i + 4 + a]]) as usize;
                4 + a + b
            }
            _ => 2 + u16::from_be_bytes([props[i + 1], props[i + 2]]) as usize,
        };
        if id == 0x13 {
            return Some(u16::from_be_bytes([props[i + 1], props[i + 2]]));
        }
        i += 1 + len;
    }
    None
}

/// A received PUBLISH: topic, packet id (QoS > 0), payload.
pub struct RawPublish {
    pub topic: String,
    pub pkid: Option<[u8; 2]>,
    pub payload: Vec<u8>,
}

/// Splits a PUBLISH body (`level` 4 or 5).
pub fn publish_parts(level: u8, first: u8, body: &[u8]) -> RawPublish {
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
    let mut at = 2 + topic_len;
    let pkid = ((first >> 1) & 3 > 0).then(|| {
        at += 2;
        [body[at - 2], body[at - 1]]
    });
    if level == 5 {
        let (n, used) = varint(body, at);
        at += used + n;
    }
    RawPublish {
        topic,
        pkid,
        payload: body[at..].to_vec(),
    }
}
