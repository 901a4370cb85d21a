//! One task per client connection: CONNECT and authentication, then every packet through
//! the ACL to the chat plane or the engine, and deliveries back to the socket.

use super::codec::{Codec, CodecError, Frame, PublishHeader, ReplyProps, Version};
use super::engine::GeneralLink;
use super::registry::{ConnId, Delivery, OutboxRx};
use super::sessions::{Dropped, SaveCaps, SavedSession};
use super::{BrokerState, Client, Refusal, Turn};
use crate::acl::{DenyReason, PublishRoute, SubscribeRoute, Who};
use crate::auth::{unix_now, AuthError};
use crate::metrics as m;
use crate::protocol::OutKind;
use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill,
    LastWillProperties, Packet, PingResp, PubAck, PubAckProperties, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecProperties, PubRecReason, Publish, PublishProperties, QoS, SubAck,
    Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
    UnsubscribeProperties,
};
use rumqttd::Notification;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

/// The router numbers its outgoing packets 1..=100 per link; chat deliveries use the rest.
const ROUTER_PKIDS: u16 = 100;
/// Chat publishes being processed at once per connection; more wait in `parked`.
const MAX_INBOUND: usize = 256;
/// Parked chat publishes before we stop reading the socket. Reading goes on while there is
/// room because the same byte stream carries the client's PUBACKs for our deliveries: if we
/// stopped reading at the first excess PUBLISH, a client waiting for its acks (which wait for
/// its PUBACKs) would deadlock with us.
const MAX_PARKED: usize = 4096;
/// Our receive maximum towards 5.0 clients.
const RECEIVE_MAXIMUM: u16 = 1024;
/// Room made in the read buffer before each socket read.
const READ_CHUNK: usize = 2048;

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// DISCONNECT from the client; `will` when 5.0 reason 0x04 asked for the will.
    Client {
        will: bool,
    },
    /// Socket closed or failed without DISCONNECT.
    Lost,
    KeepAlive,
    TakenOver(Option<oneshot::Sender<()>>),
    TokenExpired,
    Shutdown,
    /// The engine dropped the link.
    Engine,
    Protocol(DisconnectReasonCode, &'static str),
    /// The client does not take its deliveries (`queue_full`, `write_timeout`).
    Slow(&'static str),
    /// A half-received packet was not completed in time.
    PacketTimeout,
    /// A 3.1.1 publish could not be stored: no PUBACK, the client sends it again.
    Unstored,
}

impl Close {
    fn publishes_will(&self) -> bool {
        !matches!(self, Close::Client { will: false })
    }

    fn v5_reason(&self) -> Option<DisconnectReasonCode> {
        Some(match self {
            Close::Client { .. } | Close::Lost => return None,
            Close::KeepAlive => DisconnectReasonCode::KeepAliveTimeout,
            Close::TakenOver(_) => DisconnectReasonCode::SessionTakenOver,
            Close::TokenExpired => DisconnectReasonCode::NotAuthorized,
            Close::Shutdown => DisconnectReasonCode::ServerShuttingDown,
            Close::Engine | Close::Unstored => DisconnectReasonCode::UnspecifiedError,
            Close::Protocol(code, _) => *code,
            Close::Slow(_) => DisconnectReasonCode::QuotaExceeded,
            Close::PacketTimeout => DisconnectReasonCode::ProtocolError,
        })
    }
}

impl From<CodecError> for Close {
    fn from(e: CodecError) -> Close {
        match e {
            CodecError::TooLarge(_) => {
                Close::Protocol(DisconnectReasonCode::PacketTooLarge, "too_large")
            }
            CodecError::Panicked => {
                Close::Protocol(DisconnectReasonCode::MalformedPacket, "codec_panic")
            }
            CodecError::Malformed(_) | CodecError::UnsupportedLevel(_) => {
                Close::Protocol(DisconnectReasonCode::MalformedPacket, "malformed")
            }
        }
    }
}

/// What new chat subscriptions start once they are in place.
#[derive(Default)]
struct ChatStarts {
    /// Offline delivery (the inbox is covered).
    inbox: bool,
    /// Users whose retained presence is sent.
    presence: Vec<String>,
}

/// A chat publish waiting for a processing slot.
struct ChatJob {
    client: Client,
    kind: OutKind,
    payload: Bytes,
    reply: ReplyProps,
    pkid: u16,
    qos: u8,
    turn: Turn,
}

struct InboundTask {
    pkid: u16,
    qos: u8,
    handle: JoinHandle<Result<(), Refusal>>,
}

/// A SUBACK/UNSUBACK waiting for the engine's part: `None` slots are the filters sent to the
/// engine, filled from its answer in order.
struct PendingAck<T> {
    pkid: u16,
    codes: Vec<Option<T>>,
}

/// Merges the engine's codes for packet `pkid` into our pending answer (if we have one).
fn merge_pending<T: Copy>(
    pending: &mut VecDeque<PendingAck<T>>,
    pkid: u16,
    engine: Vec<T>,
    missing: T,
) -> Vec<T> {
    let Some(i) = pending.iter().position(|p| p.pkid == pkid) else {
        return engine;
    };
    let ours = pending.remove(i).map(|p| p.codes).unwrap_or_default();
    let mut engine = engine.into_iter();
    ours.into_iter()
        .map(|c| c.unwrap_or_else(|| engine.next().unwrap_or(missing)))
        .collect()
}

struct Will {
    will: LastWill,
    props: Option<LastWillProperties>,
    delay: Duration,
}

/// Serves one client socket until it closes. Never panics on client input: the codec is
/// guarded and every error closes only this connection. `_slot` is the connection's
/// `mqtt.max_connections` permit, taken at accept (before any TLS/WebSocket handshake).
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<BrokerState>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_id = state.registry.next_conn_id();
    let span = tracing::info_span!("conn", id = conn_id, %peer, user = tracing::field::Empty, device = tracing::field::Empty);
    async move {
        let (rd, wr) = tokio::io::split(stream);
        let mut io = Io {
            rd,
            wr,
            // Idle connections are the common case (phones in the background): start small,
            // grow with traffic, shrink again after bursts.
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
        };
        match connect(&mut io, conn_id, peer, &state).await {
            Ok(Some(conn)) => {
                metrics::gauge!(m::CONNECTIONS).increment(1.0);
                let leftover = Leftover::of(&conn);
                let run = std::panic::AssertUnwindSafe(conn.run(io));
                if let Err(panic) = futures_util::FutureExt::catch_unwind(run).await {
                    // A bug, not client input: log it, and still give back everything the
                    // connection held so its user does not stay "online".
                    tracing::error!(panic = panic_message(&panic), "connection task panicked");
                    metrics::counter!(m::PROTOCOL_ERRORS, "reason" => "panic").increment(1);
                    leftover.release(&state).await;
                }
                metrics::gauge!(m::CONNECTIONS).decrement(1.0);
            }
            Ok(None) => {}
            Err(reason) => {
                metrics::counter!(m::CONNECTS, "result" => reason).increment(1);
                debug!(reason, "connect failed");
            }
        }
    }
    .instrument(span)
    .await
}

/// What a connection holds outside its task, to give back if the task panics.
struct Leftover {
    conn: ConnId,
    namespaced: String,
    client: Option<Client>,
}

impl Leftover {
    fn of(c: &Conn) -> Leftover {
        Leftover {
            conn: c.conn_id,
            namespaced: c.namespaced.clone(),
            client: c.client.clone(),
        }
    }

    async fn release(self, state: &BrokerState) {
        let remaining = state.registry.unregister(self.conn);
        state.sessions.release(&self.namespaced, self.conn);
        if let Some(client) = &self.client {
            state.chat.disconnected(client, remaining).await;
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("?")
}

struct Io<S> {
    rd: ReadHalf<S>,
    wr: WriteHalf<S>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn flush(&mut self) -> std::io::Result<()> {
        flush_buf(&mut self.wr, &mut self.wbuf).await
    }
}

/// Writes out and empties `buf`; a buffer that grew large in a burst is given back.
async fn flush_buf<W: AsyncWrite + Unpin>(wr: &mut W, buf: &mut BytesMut) -> std::io::Result<()> {
    if !buf.is_empty() {
        wr.write_all(buf).await?;
        buf.clear();
        if buf.capacity() > 256 * 1024 {
            *buf = BytesMut::new();
        }
    }
    Ok(())
}

/// Reads CONNECT, authenticates, answers CONNACK. `Ok(None)`: refused (CONNACK sent).
async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    conn_id: ConnId,
    peer: SocketAddr,
    state: &Arc<BrokerState>,
) -> Result<Option<Conn>, &'static str> {
    let cfg = &state.config.mqtt;
    let deadline = Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
    let version = loop {
        match Codec::detect(&io.rbuf, cfg.max_packet_size) {
            Ok(Some(v)) => break v,
            Ok(None) => {}
            Err(CodecError::UnsupportedLevel(_)) => {
                // 3.1.1 CONNACK 0x01 is understood by every client generation.
                let codec = Codec::new(Version::V4, cfg.max_packet_size);
                let ack = ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::RefusedProtocolVersion,
                };
                let _ = codec.write(Packet::ConnAck(ack, None), &mut io.wbuf);
                let _ = io.flush().await;
                return Err("unsupported_protocol");
            }
            Err(_) => return Err("protocol_error"),
        }
        match tokio::time::timeout_at(deadline, io.rd.read_buf(&mut io.rbuf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed_before_connect"),
            Err(_) => return Err("timeout"),
            Ok(Ok(_)) => {}
        }
    };
    let mut codec = Codec::new(version, cfg.max_packet_size);
    let v5 = version == Version::V5;
    let (connect, props, will, will_props, login) = match codec.read(&mut io.rbuf) {
        Ok(Frame::Packet(Packet::Connect(c, p, w, wp, l), _)) => (c, p, w, wp, l),
        _ => return Err("protocol_error"),
    };

    let refuse = |io: &mut Io<S>, codec: &Codec, code: ConnectReturnCode| {
        let ack = ConnAck {
            session_present: false,
            code,
        };
        let _ = codec.write(Packet::ConnAck(ack, None), &mut io.wbuf);
    };

    // Authenticate.
    let has_credentials = login
        .as_ref()
        .is_some_and(|l| !l.username.is_empty() || !l.password.is_empty());
    let identity = if has_credentials {
        let login = login
            .as_ref()
            .map(|l| (l.username.as_str(), l.password.as_str()))
            .unwrap_or_default();
        state.auth.verify(login.0, login.1).map(Some)
    } else if state.config.auth.allow_anonymous {
        Ok(None)
    } else {
        Err(AuthError::Missing)
    };
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            metrics::counter!(m::AUTH_FAILURES, "reason" => e.label()).increment(1);
            state.auth_throttle.failed(peer.ip());
            let (code, label) = match (e, v5) {
                (AuthError::Missing, false) => (ConnectReturnCode::NotAuthorized, "not_authorized"),
                (AuthError::Missing, true) => (ConnectReturnCode::NotAuthorized, "not_authorized"),
                (_, _) => (ConnectReturnCode::BadUserNamePassword, "bad_credentials"),
            };
            refuse(io, &codec, code);
            let _ = io.flush().await;
            info!(reason = %e, "login refused");
            metrics::counter!(m::CONNECTS, "result" => label).increment(1);
            return Ok(None);
        }
    };

    // Client id: namespaced by user so that a takeover can only ever be by the same user.
    let mut assigned = None;
    let raw_id = if connect.client_id.is_empty() {
        if !connect.clean_session && !v5 {
            refuse(io, &codec, ConnectReturnCode::ClientIdentifierNotValid);
            let _ = io.flush().await;
            metrics::counter!(m::CONNECTS, "result" => "bad_client_id").increment(1);
            return Ok(None);
        }
        let id = format!("auto-{conn_id}-{:08x}", rand_u32());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    let user = identity.as_ref().map(|i| i.user.clone());
    let namespaced = match &user {
        Some(u) => format!("{u}:{raw_id}"),
        // `~` cannot appear in a user id, so anonymous ids never collide with users'.
        None => format!("~anon:{raw_id}"),
    };
    let span = tracing::Span::current();
    span.record("user", user.as_deref().unwrap_or("~anon"));
    span.record("device", raw_id.as_str());

    // Will: must be a general-plane topic this client may publish to.
    let will = will.and_then(|w| {
        let topic = std::str::from_utf8(&w.topic).ok()?;
        let who = Who {
            user: user.as_deref(),
            client_id: &raw_id,
        };
        match state.acl.publish(&who, topic) {
            PublishRoute::General => Some(Will {
                delay: Duration::from_secs(u64::from(
                    will_props
                        .as_ref()
                        .and_then(|p| p.delay_interval)
                        .unwrap_or(0),
                )),
                will: w,
                props: will_props,
            }),
            _ => {
                metrics::counter!(m::ACL_DENIALS, "action" => "will").increment(1);
                info!(topic, "will refused by ACL; connecting without it");
                None
            }
        }
    });

    // Keep alive, sessions.
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if cfg.max_keep_alive_secs > 0 && (keep_alive == 0 || keep_alive > cfg.max_keep_alive_secs) {
        keep_alive = cfg.max_keep_alive_secs;
        server_keep_alive = Some(keep_alive);
    }
    let props = props.unwrap_or_else(|| rumqttd::protocol::ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: vec![],
        authentication_method: None,
        authentication_data: None,
    });
    if props.authentication_method.is_some() {
        refuse(io, &codec, ConnectReturnCode::BadAuthenticationMethod);
        let _ = io.flush().await;
        return Ok(None);
    }
    let session_ttl = if v5 {
        let asked = props.session_expiry_interval.unwrap_or(0);
        Duration::from_secs(u64::from(asked.min(cfg.max_session_expiry_secs)))
    } else if connect.clean_session {
        Duration::ZERO
    } else {
        Duration::from_secs(u64::from(cfg.max_session_expiry_secs))
    };

    // Takeover: the previous owner of this client id closes before we go on, so its session
    // (if any) is saved and its engine link is gone.
    let (kick_tx, kick_rx) = oneshot::channel();
    if let Some(old) = state.sessions.claim(&namespaced, conn_id, kick_tx) {
        let (done_tx, done_rx) = oneshot::channel();
        if old.send(done_tx).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        }
    }
    let saved = if connect.clean_session {
        state.sessions.discard(&namespaced);
        None
    } else {
        state.sessions.take(&namespaced)
    };

    let window = usize::from(
        cfg.max_inflight
            .min(props.receive_maximum.unwrap_or(u16::MAX))
            .max(1),
    );
    let (outbox, out_rx) = super::registry::outbox(cfg.outbound_queue, cfg.outbound_queue_bytes);
    if !state
        .registry
        .register(conn_id, user.as_deref(), outbox, cfg.max_sessions_per_user)
    {
        metrics::counter!(m::LIMITS_HIT, "limit" => "sessions").increment(1);
        info!(
            max = cfg.max_sessions_per_user,
            "connection refused: the user has too many sessions"
        );
        refuse(io, &codec, ConnectReturnCode::QuotaExceeded);
        let _ = io.flush().await;
        state.sessions.release(&namespaced, conn_id);
        metrics::counter!(m::CONNECTS, "result" => "too_many_sessions").increment(1);
        return Ok(None);
    }

    let ack = ConnAck {
        session_present: saved.is_some(),
        code: ConnectReturnCode::Success,
    };
    let ack_props = v5.then(|| ConnAckProperties {
        session_expiry_interval: (props.session_expiry_interval.unwrap_or(0)
            != session_ttl.as_secs() as u32)
            .then_some(session_ttl.as_secs() as u32),
        receive_max: Some(RECEIVE_MAXIMUM),
        max_qos: None,
        retain_available: Some(1),
        max_packet_size: u32::try_from(cfg.max_packet_size).ok(),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(cfg.topic_alias_max),
        reason_string: None,
        user_properties: vec![],
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(1),
        server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    });
    if codec
        .write(Packet::ConnAck(ack, ack_props), &mut io.wbuf)
        .is_err()
        || io.flush().await.is_err()
    {
        state.registry.unregister(conn_id);
        state.sessions.release(&namespaced, conn_id);
        return Err("write_failed");
    }
    metrics::counter!(m::CONNECTS, "result" => "ok").increment(1);
    debug!(version = ?version, keep_alive, "connected");

    let client = user.as_ref().map(|u| Client {
        conn: conn_id,
        user: u.clone(),
        device: raw_id.clone(),
        v5,
    });
    // `exp` is client-supplied: a far-future one means no deadline, never an overflow.
    let token_deadline = identity.as_ref().and_then(|i| {
        Instant::now().checked_add(Duration::from_secs(i.expires_at.saturating_sub(unix_now())))
    });
    let mut conn = Conn {
        state: state.clone(),
        codec,
        v5,
        conn_id,
        client,
        raw_id,
        namespaced,
        keep_alive,
        token_deadline,
        session_ttl,
        window,
        out_rx,
        kick_rx,
        link: None,
        general_filters: HashSet::new(),
        chat_filters: Vec::new(),
        pending_subacks: VecDeque::new(),
        pending_unsubacks: VecDeque::new(),
        inbound: VecDeque::new(),
        parked: VecDeque::new(),
        last_send: None,
        chat_qos2: HashSet::new(),
        inflight: HashSet::new(),
        next_pkid: ROUTER_PKIDS,
        aliases: HashMap::new(),
        will,
        wbuf: BytesMut::new(),
        catchup: None,
    };
    if let Some(c) = &conn.client {
        state.chat.connected(c).await;
    }
    if let Some(saved) = saved {
        conn.restore(saved).await;
    }
    Ok(Some(conn))
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process from the OS; enough for unguessable auto client ids
    // that only need to be unique.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

struct Conn {
    state: Arc<BrokerState>,
    codec: Codec,
    v5: bool,
    conn_id: ConnId,
    client: Option<Client>,
    raw_id: String,
    namespaced: String,
    keep_alive: u16,
    token_deadline: Option<Instant>,
    session_ttl: Duration,
    window: usize,
    out_rx: OutboxRx,
    kick_rx: oneshot::Receiver<oneshot::Sender<()>>,
    link: Option<GeneralLink>,
    general_filters: HashSet<String>,
    chat_filters: Vec<String>,
    pending_subacks: VecDeque<PendingAck<SubscribeReasonCode>>,
    pending_unsubacks: VecDeque<PendingAck<UnsubAckReason>>,
    inbound: VecDeque<InboundTask>,
    parked: VecDeque<ChatJob>,
    /// The turn the next send waits for.
    last_send: Option<oneshot::Receiver<()>>,
    /// QoS 2 chat publishes answered with PUBREC, waiting for PUBREL.
    chat_qos2: HashSet<u16>,
    /// Packet ids of chat deliveries not yet acknowledged.
    inflight: HashSet<u16>,
    next_pkid: u16,
    aliases: HashMap<u16, Bytes>,
    will: Option<Will>,
    /// Packets to write; moved into the socket buffer after each event.
    wbuf: BytesMut,
    /// Offline push and retained presence after the latest chat SUBSCRIBE (one at a time).
    /// The task, and whether it pushes the offline backlog.
    catchup: Option<(JoinHandle<()>, bool)>,
}

async fn next_inbound(q: &mut VecDeque<InboundTask>) -> (u16, u8, Result<(), Refusal>) {
    let Some(front) = q.front_mut() else {
        return std::future::pending().await;
    };
    let result = (&mut front.handle)
        .await
        .unwrap_or(Err(Refusal::Unspecified));
    let (pkid, qos) = (front.pkid, front.qos);
    q.pop_front();
    (pkid, qos, result)
}

async fn next_link_event(link: &mut Option<GeneralLink>) -> Option<Notification> {
    match link {
        Some(l) => l.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Conn {
    fn who(&self) -> Who<'_> {
        Who {
            user: self.client.as_ref().map(|c| c.user.as_str()),
            client_id: &self.raw_id,
        }
    }

    fn put(&mut self, packet: Packet) -> Result<(), Close> {
        metrics::counter!(m::PACKETS_SENT, "type" => packet_kind(&packet)).increment(1);
        self.codec
            .write(packet, &mut self.wbuf)
            .map_err(Close::from)
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, mut io: Io<S>) {
        let mut shutdown = self.state.shutdown.clone();
        let keep_alive =
            (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500));
        let (write_timeout, packet_timeout) = {
            let mqtt = &self.state.config.mqtt;
            (
                Duration::from_millis(mqtt.write_timeout_ms),
                Duration::from_millis(mqtt.packet_timeout_ms),
            )
        };
        let slow = self.out_rx.slow.clone();
        let mut last_rx = Instant::now();
        // When the bytes of a packet not yet complete started to arrive.
        let mut partial_since: Option<Instant> = None;
        // Bytes of CONNECT's batch may already hold more packets.
        let mut close = self.parse(&mut io.rbuf).await.err();
        while close.is_none() {
            match tokio::time::timeout(write_timeout, flush_buf(&mut io.wr, &mut self.wbuf)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    close = Some(Close::Lost);
                    break;
                }
                Err(_) => {
                    metrics::counter!(m::SLOW_CLIENTS, "reason" => "write_timeout").increment(1);
                    close = Some(Close::Slow("write_timeout"));
                    break;
                }
            }
            partial_since = match (io.rbuf.is_empty(), partial_since) {
                (true, _) => None,
                (false, None) => Some(Instant::now()),
                (false, since) => since,
            };
            let reading = self.parked.len() < MAX_PARKED;
            let partial_deadline = partial_since
                .filter(|_| reading)
                .and_then(|t| t.checked_add(packet_timeout));
            if io.rbuf.is_empty() && io.rbuf.capacity() > 64 * 1024 {
                io.rbuf = BytesMut::with_capacity(READ_CHUNK);
            }
            io.rbuf.reserve(READ_CHUNK);
            let can_deliver = self.inflight.len() < self.window;
            let ka_deadline = keep_alive.and_then(|k| last_rx.checked_add(k));
            let step: Result<(), Close> = tokio::select! {
                biased;
                r = &mut self.kick_rx => Err(Close::TakenOver(r.ok())),
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => Err(Close::Shutdown),
                _ = sleep_until_opt(self.token_deadline) => Err(Close::TokenExpired),
                _ = sleep_until_opt(ka_deadline) => Err(Close::KeepAlive),
                _ = slow.wait() => Err(Close::Slow("queue_full")),
                _ = sleep_until_opt(partial_deadline) => {
                    metrics::counter!(m::PROTOCOL_ERRORS, "reason" => "packet_timeout").increment(1);
                    Err(Close::PacketTimeout)
                }
                (pkid, qos, result) = next_inbound(&mut self.inbound) => {
                    let r = self.finish_inbound(pkid, qos, result);
                    self.unpark();
                    r
                }
                n = next_link_event(&mut self.link) => match n {
                    Some(n) => self.on_engine(n),
                    None => Err(Close::Engine),
                },
                Some(d) = self.out_rx.recv(), if can_deliver => self.deliver(d),
                r = io.rd.read_buf(&mut io.rbuf), if reading => match r {
                    Ok(0) | Err(_) => Err(Close::Lost),
                    Ok(_) => {
                        last_rx = Instant::now();
                        self.parse(&mut io.rbuf).await
                    }
                },
            };
            if let Err(c) = step {
                close = Some(c);
            }
        }
        let close = close.unwrap_or(Close::Lost);
        if let Close::Slow(reason) = &close {
            info!(
                reason,
                "closing a client that does not keep up; it catches up on return"
            );
        }
        // Best effort: tell a 5.0 client why the server closed.
        if self.v5 {
            if let Some(reason_code) = close.v5_reason() {
                let _ = self.put(Packet::Disconnect(Disconnect { reason_code }, None));
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            flush_buf(&mut io.wr, &mut self.wbuf),
        )
        .await;
        let _ = io.wr.shutdown().await;
        self.finish(close).await;
    }

    /// Handles every complete packet in `rbuf`.
    async fn parse(&mut self, rbuf: &mut BytesMut) -> Result<(), Close> {
        loop {
            match self.codec.read(rbuf) {
                Ok(Frame::Incomplete) => return Ok(()),
                Ok(Frame::Packet(packet, header)) => {
                    metrics::counter!(m::PACKETS_RECEIVED, "type" => packet_kind(&packet))
                        .increment(1);
                    self.on_packet(packet, header).await?;
                }
                Err(e) => {
                    let close = Close::from(e);
                    if let Close::Protocol(_, label) = &close {
                        metrics::counter!(m::PROTOCOL_ERRORS, "reason" => *label).increment(1);
                    }
                    debug!(?close, "protocol error");
                    return Err(close);
                }
            }
        }
    }

    async fn on_packet(
        &mut self,
        packet: Packet,
        header: Option<PublishHeader>,
    ) -> Result<(), Close> {
        match packet {
            Packet::Publish(p, props) => {
                let header = header.ok_or(Close::Protocol(
                    DisconnectReasonCode::MalformedPacket,
                    "publish",
                ))?;
                self.on_publish(p, props, header).await
            }
            Packet::PubAck(ack, props) => {
                if ack.pkid > ROUTER_PKIDS {
                    self.inflight.remove(&ack.pkid);
                    Ok(())
                } else {
                    self.send_to_engine(Packet::PubAck(ack, props)).await
                }
            }
            Packet::PubRel(rel, props) => {
                if self.chat_qos2.remove(&rel.pkid) {
                    self.put(Packet::PubComp(
                        PubComp {
                            pkid: rel.pkid,
                            reason: PubCompReason::Success,
                        },
                        None,
                    ))
                } else if self.link.is_some() {
                    self.send_to_engine(Packet::PubRel(rel, props)).await
                } else {
                    self.put(Packet::PubComp(
                        PubComp {
                            pkid: rel.pkid,
                            reason: PubCompReason::PacketIdentifierNotFound,
                        },
                        None,
                    ))
                }
            }
            p @ (Packet::PubRec(..) | Packet::PubComp(..)) => self.send_to_engine(p).await,
            Packet::Subscribe(s, props) => self.on_subscribe(s, props).await,
            Packet::Unsubscribe(u, props) => self.on_unsubscribe(u, props).await,
            Packet::PingReq(_) => self.put(Packet::PingResp(PingResp)),
            Packet::Disconnect(d, props) => {
                if let Some(expiry) = props.and_then(|p| p.session_expiry_interval) {
                    let max = self.state.config.mqtt.max_session_expiry_secs;
                    self.session_ttl = Duration::from_secs(u64::from(expiry.min(max)));
                }
                Err(Close::Client {
                    will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                })
            }
            Packet::Connect(..) => Err(Close::Protocol(
                DisconnectReasonCode::ProtocolError,
                "second_connect",
            )),
            _ => Err(Close::Protocol(
                DisconnectReasonCode::ProtocolError,
                "server_packet",
            )),
        }
    }

    async fn on_publish(
        &mut self,
        mut p: Publish,
        mut props: Option<PublishProperties>,
        h: PublishHeader,
    ) -> Result<(), Close> {
        // 5.0 topic aliases are resolved here, so the ACL always sees the real topic.
        if let Some(alias) = props.as_mut().and_then(|pr| pr.topic_alias.take()) {
            if alias == 0 || alias > self.state.config.mqtt.topic_alias_max {
                return Err(Close::Protocol(
                    DisconnectReasonCode::TopicAliasInvalid,
                    "topic_alias",
                ));
            }
            if p.topic.is_empty() {
                p.topic = self.aliases.get(&alias).cloned().ok_or(Close::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "unknown_topic_alias",
                ))?;
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        let topic = std::str::from_utf8(&p.topic).unwrap_or("");
        let route = self.state.acl.publish(&self.who(), topic);
        match route {
            PublishRoute::Chat(kind) => {
                let Some(client) = self.client.clone() else {
                    return self.deny_publish(h, DenyReason::NotAuthorized, topic.to_owned());
                };
                metrics::counter!(m::MESSAGES, "plane" => "chat", "kind" => kind.as_str())
                    .increment(1);
                // Sends are chained in arrival order (see `Turn`); other kinds run freely.
                let turn = if kind == OutKind::Send {
                    let (turn, next) = Turn::chained(self.last_send.take());
                    self.last_send = Some(next);
                    turn
                } else {
                    Turn::default()
                };
                let job = ChatJob {
                    client,
                    kind,
                    payload: p.payload,
                    reply: ReplyProps::from_props(props.as_ref()),
                    pkid: h.pkid,
                    qos: h.qos,
                    turn,
                };
                // QoS 0 (typing) takes a slot like the rest, so a flood of it is bounded too;
                // it simply has nothing to acknowledge.
                if self.inbound.len() < MAX_INBOUND && self.parked.is_empty() {
                    let task = self.spawn_chat(job);
                    self.inbound.push_back(task);
                } else {
                    self.parked.push_back(job);
                }
                Ok(())
            }
            PublishRoute::General => {
                metrics::counter!(m::MESSAGES, "plane" => "general", "kind" => "publish")
                    .increment(1);
                // The codec's slices share the read buffer's allocation (a few KB per read).
                // The engine keeps publishes in its per-filter logs, so hand it copies sized
                // to the message: otherwise every logged 64-byte message pins a whole read
                // chunk (measured: 2.2 MB/s of growth at 1,000 msg/s).
                p.topic = Bytes::copy_from_slice(&p.topic);
                p.payload = Bytes::copy_from_slice(&p.payload);
                if let Some(cd) = props.as_mut().and_then(|pr| pr.correlation_data.as_mut()) {
                    *cd = Bytes::copy_from_slice(cd);
                }
                self.send_to_engine(Packet::Publish(p, props)).await
            }
            PublishRoute::Deny(reason) => self.deny_publish(h, reason, topic.to_owned()),
        }
    }

    fn spawn_chat(&self, job: ChatJob) -> InboundTask {
        let chat = self.state.chat.clone();
        let ChatJob {
            client,
            kind,
            payload,
            reply,
            pkid,
            qos,
            turn,
        } = job;
        let handle =
            tokio::spawn(async move { chat.publish(&client, kind, payload, reply, turn).await });
        InboundTask { pkid, qos, handle }
    }

    /// Moves parked chat publishes into free processing slots, in arrival order.
    fn unpark(&mut self) {
        while self.inbound.len() < MAX_INBOUND {
            let Some(job) = self.parked.pop_front() else {
                break;
            };
            let task = self.spawn_chat(job);
            self.inbound.push_back(task);
        }
    }

    fn deny_publish(
        &mut self,
        h: PublishHeader,
        reason: DenyReason,
        topic: String,
    ) -> Result<(), Close> {
        metrics::counter!(m::ACL_DENIALS, "action" => "publish").increment(1);
        debug!(topic, ?reason, "publish denied");
        let code = match reason {
            DenyReason::Invalid => PubAckReason::TopicNameInvalid,
            DenyReason::NotAuthorized => PubAckReason::NotAuthorized,
        };
        if !self.v5 {
            if let Some(client) = &self.client {
                self.state.chat.publish_denied(client, &topic);
            }
        }
        match h.qos {
            0 => Ok(()),
            1 => self.put(Packet::PubAck(
                PubAck {
                    pkid: h.pkid,
                    reason: code,
                },
                None,
            )),
            _ => {
                let rec = match code {
                    PubAckReason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
                    _ => PubRecReason::NotAuthorized,
                };
                if !self.v5 {
                    // 3.1.1 has no negative PUBREC: finish the exchange, drop the message.
                    self.chat_qos2.insert(h.pkid);
                }
                self.put(Packet::PubRec(
                    PubRec {
                        pkid: h.pkid,
                        reason: rec,
                    },
                    None,
                ))
            }
        }
    }

    /// Answers a processed chat publish, in arrival order: PUBACK/PUBREC success only for
    /// what was stored (see [`Refusal`] for 3.1.1).
    fn finish_inbound(
        &mut self,
        pkid: u16,
        qos: u8,
        result: Result<(), Refusal>,
    ) -> Result<(), Close> {
        if qos == 0 {
            return Ok(());
        }
        if let Err(refusal) = result {
            if !self.v5 && !refusal.is_final() {
                // No negative PUBACK in 3.1.1: close without acknowledging, so the client's
                // library sends it again (DUP) and cid dedup keeps it exactly-once.
                metrics::counter!(m::UNSTORED_CLOSES).increment(1);
                warn!(
                    reason = refusal.reason(),
                    "publish not stored: closing without PUBACK"
                );
                return Err(Close::Unstored);
            }
        }
        let (reason, text) = match result {
            Ok(()) => (PubAckReason::Success, None),
            // 3.1.1: a final refusal has been answered on in/ack; the PUBACK completes the flow.
            Err(_) if !self.v5 => (PubAckReason::Success, None),
            Err(r) => (
                match r {
                    Refusal::NotAuthorized => PubAckReason::NotAuthorized,
                    Refusal::QuotaExceeded => PubAckReason::QuotaExceeded,
                    Refusal::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
                    Refusal::Unavailable | Refusal::Unspecified => PubAckReason::UnspecifiedError,
                },
                Some(r.reason().to_owned()),
            ),
        };
        if qos == 2 {
            if reason == PubAckReason::Success {
                // Only a successful PUBREC continues to PUBREL/PUBCOMP.
                self.chat_qos2.insert(pkid);
            }
            let rec = match reason {
                PubAckReason::Success => PubRecReason::Success,
                PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
                PubAckReason::QuotaExceeded => PubRecReason::QuotaExceeded,
                PubAckReason::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
                _ => PubRecReason::UnspecifiedError,
            };
            let props = text.map(|reason_string| PubRecProperties {
                reason_string: Some(reason_string),
                user_properties: vec![],
            });
            self.put(Packet::PubRec(PubRec { pkid, reason: rec }, props))
        } else {
            let props = text.map(|reason_string| PubAckProperties {
                reason_string: Some(reason_string),
                user_properties: vec![],
            });
            self.put(Packet::PubAck(PubAck { pkid, reason }, props))
        }
    }

    async fn on_subscribe(
        &mut self,
        s: Subscribe,
        props: Option<SubscribeProperties>,
    ) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut general = Vec::new();
        let mut started = ChatStarts::default();
        for f in s.filters {
            let granted = if f.qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let route = self.state.acl.subscribe(&self.who(), &f.path);
            if !matches!(route, SubscribeRoute::Deny(_)) && !self.may_hold_another(&f.path) {
                metrics::counter!(m::LIMITS_HIT, "limit" => "subscriptions").increment(1);
                codes.push(Some(SubscribeReasonCode::QuotaExceeded));
                continue;
            }
            let code = match route {
                SubscribeRoute::General => {
                    self.general_filters.insert(f.path.clone());
                    general.push(f);
                    codes.push(None);
                    continue;
                }
                SubscribeRoute::Deny(DenyReason::Invalid) => {
                    SubscribeReasonCode::TopicFilterInvalid
                }
                SubscribeRoute::Deny(DenyReason::NotAuthorized) => {
                    metrics::counter!(m::ACL_DENIALS, "action" => "subscribe").increment(1);
                    SubscribeReasonCode::NotAuthorized
                }
                chat => {
                    if self.add_chat_filter(chat, &f.path, &mut started).await {
                        SubscribeReasonCode::Success(granted)
                    } else {
                        metrics::counter!(m::ACL_DENIALS, "action" => "subscribe").increment(1);
                        SubscribeReasonCode::NotAuthorized
                    }
                }
            };
            codes.push(Some(code));
        }
        if general.is_empty() {
            let codes = codes
                .into_iter()
                .map(|c| c.unwrap_or(SubscribeReasonCode::Unspecified))
                .collect();
            self.put(Packet::SubAck(
                SubAck {
                    pkid: s.pkid,
                    return_codes: codes,
                },
                None,
            ))?;
        } else {
            self.pending_subacks.push_back(PendingAck {
                pkid: s.pkid,
                codes,
            });
            self.send_to_engine(Packet::Subscribe(
                Subscribe {
                    pkid: s.pkid,
                    filters: general,
                },
                props,
            ))
            .await?;
        }
        self.after_chat_subscribe(started);
        Ok(())
    }

    /// Whether this connection may add `filter` under `mqtt.max_subscriptions` (a filter it
    /// already holds is replaced, not added).
    fn may_hold_another(&self, filter: &str) -> bool {
        let held = self.general_filters.len() + self.chat_filters.len();
        held < self.state.config.mqtt.max_subscriptions
            || self.general_filters.contains(filter)
            || self.chat_filters.iter().any(|f| f == filter)
    }

    /// Registers a chat-plane filter (`route` from the ACL) for this connection and remembers
    /// it for the session. False when the user may not have it (not a member of the group).
    async fn add_chat_filter(
        &mut self,
        route: SubscribeRoute,
        filter: &str,
        started: &mut ChatStarts,
    ) -> bool {
        let registry = &self.state.registry;
        match route {
            SubscribeRoute::ChatUser { inbox } => {
                registry.subscribe_user(self.conn_id, filter);
                started.inbox |= inbox;
            }
            SubscribeRoute::ChatGroup { gid } => {
                let user = self
                    .client
                    .as_ref()
                    .map(|c| c.user.as_str())
                    .unwrap_or_default();
                if !self.state.chat.may_subscribe_group(user, &gid).await {
                    return false;
                }
                registry.subscribe_group(self.conn_id, &gid, filter);
            }
            SubscribeRoute::Presence { user } => {
                registry.subscribe_presence(self.conn_id, &user);
                started.presence.push(user);
            }
            SubscribeRoute::General | SubscribeRoute::Deny(_) => return false,
        }
        self.remember_chat(filter);
        true
    }

    fn remember_chat(&mut self, filter: &str) {
        if !self.chat_filters.iter().any(|f| f == filter) {
            self.chat_filters.push(filter.to_owned());
        }
    }

    /// Starts offline delivery and sends retained presence after chat subscriptions. One
    /// such task per connection: a newer SUBSCRIBE replaces a running one (what it had not
    /// pushed yet is still pending, and the new one starts from the oldest).
    fn after_chat_subscribe(&mut self, started: ChatStarts) {
        let ChatStarts { inbox, presence } = started;
        let Some(client) = self.client.clone() else {
            return;
        };
        let (chat, registry) = (self.state.chat.clone(), self.state.registry.clone());
        if !inbox && presence.is_empty() {
            return;
        }
        let mut inbox = inbox;
        if let Some((running, pushing)) = self.catchup.take() {
            if !running.is_finished() {
                running.abort();
                // A replaced push starts again from the oldest pending message.
                inbox |= pushing;
            }
        }
        let pushing = inbox;
        let task = tokio::spawn(async move {
            for user in presence {
                if let Some(payload) = chat.presence(&user).await {
                    let d = Delivery {
                        topic: Bytes::from(crate::protocol::presence_topic(&user)),
                        payload,
                        qos: 1,
                        retain: true,
                        props: None,
                    };
                    registry.send_to(client.conn, d);
                }
            }
            if inbox {
                chat.inbox_subscribed(&client).await;
            }
        });
        self.catchup = Some((task, pushing));
    }

    async fn on_unsubscribe(
        &mut self,
        u: Unsubscribe,
        props: Option<UnsubscribeProperties>,
    ) -> Result<(), Close> {
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut general = Vec::new();
        for f in u.filters {
            if self.general_filters.remove(&f) {
                general.push(f);
                reasons.push(None);
            } else if self.state.registry.unsubscribe(self.conn_id, &f) {
                self.chat_filters.retain(|c| c != &f);
                reasons.push(Some(UnsubAckReason::Success));
            } else {
                reasons.push(Some(UnsubAckReason::NoSubscriptionExisted));
            }
        }
        if general.is_empty() {
            let reasons = reasons
                .into_iter()
                .map(|r| r.unwrap_or(UnsubAckReason::Success))
                .collect();
            self.put(Packet::UnsubAck(
                UnsubAck {
                    pkid: u.pkid,
                    reasons,
                },
                None,
            ))
        } else {
            self.pending_unsubacks.push_back(PendingAck {
                pkid: u.pkid,
                codes: reasons,
            });
            self.send_to_engine(Packet::Unsubscribe(
                Unsubscribe {
                    pkid: u.pkid,
                    filters: general,
                },
                props,
            ))
            .await
        }
    }

    /// Sends a packet to the engine, opening this connection's link on first use.
    async fn send_to_engine(&mut self, packet: Packet) -> Result<(), Close> {
        self.ensure_link(self.session_ttl.is_zero()).await?;
        match self.link.as_mut() {
            Some(link) => link.send(packet).await.map_err(|_| Close::Engine),
            None => Err(Close::Engine),
        }
    }

    /// Opens this connection's engine link if it has none; `clean` = no session to keep.
    async fn ensure_link(&mut self, clean: bool) -> Result<(), Close> {
        if self.link.is_none() {
            let link = self
                .state
                .engine
                .open(&self.namespaced, clean)
                .await
                .map_err(|e| {
                    warn!(error = %e, "engine link refused");
                    Close::Engine
                })?;
            self.link = Some(link);
        }
        Ok(())
    }

    fn on_engine(&mut self, n: Notification) -> Result<(), Close> {
        match n {
            Notification::Forward(f) => {
                metrics::counter!(m::MESSAGES, "plane" => "general", "kind" => "delivery")
                    .increment(1);
                self.put(Packet::Publish(f.publish, f.properties))
            }
            Notification::DeviceAck(ack) => match Packet::from(ack) {
                Packet::SubAck(s, props) => {
                    let codes = merge_pending(
                        &mut self.pending_subacks,
                        s.pkid,
                        s.return_codes,
                        SubscribeReasonCode::Unspecified,
                    );
                    self.put(Packet::SubAck(
                        SubAck {
                            pkid: s.pkid,
                            return_codes: codes,
                        },
                        props,
                    ))
                }
                Packet::UnsubAck(u, props) => {
                    let reasons = merge_pending(
                        &mut self.pending_unsubacks,
                        u.pkid,
                        u.reasons,
                        UnsubAckReason::Success,
                    );
                    self.put(Packet::UnsubAck(
                        UnsubAck {
                            pkid: u.pkid,
                            reasons,
                        },
                        props,
                    ))
                }
                // Pings and CONNACK are ours; the link's own are not the client's business.
                Packet::ConnAck(..) | Packet::PingResp(_) => Ok(()),
                other => self.put(other),
            },
            Notification::Disconnect(d, _) => {
                debug!(reason = ?d.reason_code, "engine closed the link");
                Err(Close::Engine)
            }
            _ => Ok(()),
        }
    }

    /// Writes a chat delivery, as QoS 1 with a packet id above the engine's range.
    fn deliver(&mut self, d: Delivery) -> Result<(), Close> {
        let pkid = if d.qos == 0 {
            0
        } else {
            let mut pkid = self.next_pkid;
            loop {
                pkid = if pkid == u16::MAX {
                    ROUTER_PKIDS + 1
                } else {
                    pkid + 1
                };
                if !self.inflight.contains(&pkid) {
                    break;
                }
            }
            self.next_pkid = pkid;
            self.inflight.insert(pkid);
            pkid
        };
        let publish = super::codec::publish(&d.topic, &d.payload, d.qos.min(1), pkid, d.retain);
        let props = if self.v5 { d.props.map(|p| *p) } else { None };
        self.put(Packet::Publish(publish, props))
    }

    /// Re-applies a persistent session's subscriptions.
    async fn restore(&mut self, saved: SavedSession) {
        let mut started = ChatStarts::default();
        for f in saved.chat_filters {
            // The same checks as a SUBSCRIBE: membership may have changed meanwhile.
            let route = self.state.acl.subscribe(&self.who(), &f);
            self.add_chat_filter(route, &f, &mut started).await;
        }
        if !saved.general_filters.is_empty() {
            // Reopening the link with clean_session = false makes rumqttd restore its side.
            self.general_filters = saved.general_filters.into_iter().collect();
            if let Err(c) = self.ensure_link(false).await {
                warn!(?c, "could not restore the general-plane session");
            }
        }
        self.after_chat_subscribe(started);
    }

    /// Cleanup after the socket is gone: will, session, engine link, registry, presence.
    async fn finish(mut self, close: Close) {
        debug!(?close, "closed");
        if let Some((task, _)) = self.catchup.take() {
            task.abort();
        }
        if close.publishes_will() {
            if let Some(will) = self.will.take() {
                self.publish_will(will);
            }
        }
        let persistent = !self.session_ttl.is_zero();
        if persistent {
            let general = self.general_filters.drain().collect();
            let chat = std::mem::take(&mut self.chat_filters);
            let cfg = &self.state.config.mqtt;
            let caps = SaveCaps {
                per_user: cfg.max_saved_sessions_per_user,
                total: cfg.max_saved_sessions,
            };
            let user = self.client.as_ref().map(|c| c.user.as_str());
            let session = SavedSession::new(chat, general, self.session_ttl);
            match self
                .state
                .sessions
                .save(user, &self.namespaced, session, caps)
            {
                None => {}
                Some(Dropped::UsersOldest(id)) => {
                    metrics::counter!(m::LIMITS_HIT, "limit" => "saved_sessions_per_user")
                        .increment(1);
                    info!(
                        dropped = %id,
                        max = caps.per_user,
                        "the user's oldest saved session was dropped to keep this one"
                    );
                }
                Some(Dropped::Full) => {
                    metrics::counter!(m::LIMITS_HIT, "limit" => "saved_sessions").increment(1);
                    warn!(
                        max = caps.total,
                        "session not kept: mqtt.max_saved_sessions reached"
                    );
                }
            }
        }
        if let Some(link) = self.link.take() {
            link.close().await;
        }
        let remaining = self.state.registry.unregister(self.conn_id);
        if let Some(client) = &self.client {
            self.state.chat.disconnected(client, remaining).await;
        }
        self.state.sessions.release(&self.namespaced, self.conn_id);
        if let Close::TakenOver(Some(done)) = close {
            let _ = done.send(());
        }
    }

    fn publish_will(&self, will: Will) {
        let delay = will.delay.min(self.session_ttl);
        let engine = self.state.engine.clone();
        if delay.is_zero() {
            engine.publish_will(&will.will, will.props.as_ref());
            return;
        }
        // 5.0 will delay: publish later unless the client id is back online by then. At most
        // `mqtt.max_connections` wills wait at once; past that one is published now (early,
        // never lost).
        let Ok(slot) = self.state.will_slots.clone().try_acquire_owned() else {
            metrics::counter!(m::LIMITS_HIT, "limit" => "delayed_wills").increment(1);
            engine.publish_will(&will.will, will.props.as_ref());
            return;
        };
        let state = self.state.clone();
        let id = self.namespaced.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::time::sleep(delay).await;
            if !state.sessions.is_live(&id) {
                engine.publish_will(&will.will, will.props.as_ref());
            }
        });
    }
}

fn packet_kind(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "connect",
        Packet::ConnAck(..) => "connack",
        Packet::Publish(..) => "publish",
        Packet::PubAck(..) => "puback",
        Packet::PubRec(..) => "pubrec",
        Packet::PubRel(..) => "pubrel",
        Packet::PubComp(..) => "pubcomp",
        Packet::Subscribe(..) => "subscribe",
        Packet::SubAck(..) => "suback",
        Packet::Unsubscribe(..) => "unsubscribe",
        Packet::UnsubAck(..) => "unsuback",
        Packet::PingReq(_) => "pingreq",
        Packet::PingResp(_) => "pingresp",
        Packet::Disconnect(..) => "disconnect",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_codes_fill_the_pending_slots_in_order() {
        let mut pending = VecDeque::from([PendingAck {
            pkid: 7,
            codes: vec![Some(1u8), None, Some(3), None],
        }]);
        assert_eq!(
            merge_pending(&mut pending, 7, vec![20, 40], 0),
            vec![1, 20, 3, 40]
        );
        assert!(pending.is_empty());
        // An answer we were not waiting for passes through; a short one is padded.
        assert_eq!(merge_pending(&mut pending, 9, vec![5], 0), vec![5]);
        pending.push_back(PendingAck {
            pkid: 1,
            codes: vec![None, None],
        });
        assert_eq!(merge_pending(&mut pending, 1, vec![2], 0), vec![2, 0]);
    }
}
