//! One task per client connection: CONNECT and authentication, then every packet through
//! the ACL to the chat plane or the engine, and deliveries back to the socket.

mod close;
mod connect;
mod general;
mod publish;
mod subscribe;

use super::codec::{Codec, CodecError, Frame, PublishHeader, ReplyProps, Version};
use super::engine::GeneralLink;
use super::registry::{ConnId, Delivery, OutboxRx};
use super::sessions::{Dropped, SaveCaps, SavedSession};
use super::{BrokerState, ChatSession, ChatTask, Client, Refusal};
use crate::acl::{ChatFilter, DenyReason, PublishRoute, SubscribeRoute, Who};
use crate::auth::{unix_now, AuthError};
use crate::metrics as m;
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

/// A chat publish waiting for a processing slot.
struct ParkedChat {
    pkid: u16,
    qos: u8,
    task: ChatTask,
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
        match connect::connect(&mut io, conn_id, peer, &state).await {
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
            state.chat.detached(client, remaining).await;
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

/// The general plane of one connection: the engine link (opened on first use), the filters
/// held there, and the SUBACK/UNSUBACK answers waiting for the engine's part.
#[derive(Default)]
struct General {
    link: Option<GeneralLink>,
    filters: HashSet<String>,
    subacks: VecDeque<PendingAck<SubscribeReasonCode>>,
    unsubacks: VecDeque<PendingAck<UnsubAckReason>>,
}

/// Chat publishes from the client: in processing (answered in arrival order), waiting for a
/// slot, and QoS 2 ones between our PUBREC and the client's PUBREL.
#[derive(Default)]
struct Inbound {
    running: VecDeque<InboundTask>,
    parked: VecDeque<ParkedChat>,
    qos2: HashSet<u16>,
}

/// Chat deliveries to the client: at most `window` in flight, by packet id.
struct Outbound {
    window: usize,
    /// Packet ids of chat deliveries not yet acknowledged.
    inflight: HashSet<u16>,
    next_pkid: u16,
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
    out_rx: OutboxRx,
    kick_rx: oneshot::Receiver<oneshot::Sender<()>>,
    general: General,
    /// The chat side of an authenticated client (`None` for anonymous ones: the ACL never
    /// routes chat topics for them).
    chat: Option<Box<dyn ChatSession>>,
    inbound: Inbound,
    outbound: Outbound,
    aliases: HashMap<u16, Bytes>,
    will: Option<Will>,
    /// Packets to write; moved into the socket buffer after each event.
    wbuf: BytesMut,
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
            if let Err(c) = self.flush_out(&mut io.wr, write_timeout).await {
                close = Some(c);
                break;
            }
            partial_since = match (io.rbuf.is_empty(), partial_since) {
                (true, _) => None,
                (false, None) => Some(Instant::now()),
                (false, since) => since,
            };
            let reading = self.inbound.parked.len() < MAX_PARKED;
            let partial_deadline = partial_since
                .filter(|_| reading)
                .and_then(|t| t.checked_add(packet_timeout));
            if io.rbuf.is_empty() && io.rbuf.capacity() > 64 * 1024 {
                io.rbuf = BytesMut::with_capacity(READ_CHUNK);
            }
            io.rbuf.reserve(READ_CHUNK);
            let can_deliver = self.outbound.inflight.len() < self.outbound.window;
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
                (pkid, qos, result) = next_inbound(&mut self.inbound.running) => {
                    let r = self.finish_inbound(pkid, qos, result);
                    self.unpark();
                    r
                }
                n = next_link_event(&mut self.general.link) => match n {
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
        self.close_socket(&mut io.wr, &close).await;
        self.finish(close).await;
    }

    /// Writes what is buffered; a socket that takes nothing for `timeout` is a slow client.
    async fn flush_out<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        timeout: Duration,
    ) -> Result<(), Close> {
        match tokio::time::timeout(timeout, flush_buf(wr, &mut self.wbuf)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close::Lost),
            Err(_) => {
                metrics::counter!(m::SLOW_CLIENTS, "reason" => "write_timeout").increment(1);
                Err(Close::Slow("write_timeout"))
            }
        }
    }

    /// Says why (5.0 DISCONNECT, best effort), flushes for at most a second and shuts the
    /// socket.
    async fn close_socket<W: AsyncWrite + Unpin>(&mut self, wr: &mut W, close: &Close) {
        if let Close::Slow(reason) = close {
            info!(
                reason,
                "closing a client that does not keep up; it catches up on return"
            );
        }
        if self.v5 {
            if let Some(reason_code) = close.v5_reason() {
                let _ = self.put(Packet::Disconnect(Disconnect { reason_code }, None));
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), flush_buf(wr, &mut self.wbuf)).await;
        let _ = wr.shutdown().await;
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
                    self.outbound.inflight.remove(&ack.pkid);
                    Ok(())
                } else {
                    self.send_to_engine(Packet::PubAck(ack, props)).await
                }
            }
            Packet::PubRel(rel, props) => {
                if self.inbound.qos2.remove(&rel.pkid) {
                    self.put(Packet::PubComp(
                        PubComp {
                            pkid: rel.pkid,
                            reason: PubCompReason::Success,
                        },
                        None,
                    ))
                } else if self.general.link.is_some() {
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

    /// Writes a chat delivery, as QoS 1 with a packet id above the engine's range.
    fn deliver(&mut self, d: Delivery) -> Result<(), Close> {
        let pkid = if d.qos == 0 {
            0
        } else {
            let mut pkid = self.outbound.next_pkid;
            loop {
                pkid = if pkid == u16::MAX {
                    ROUTER_PKIDS + 1
                } else {
                    pkid + 1
                };
                if !self.outbound.inflight.contains(&pkid) {
                    break;
                }
            }
            self.outbound.next_pkid = pkid;
            self.outbound.inflight.insert(pkid);
            pkid
        };
        let publish = super::codec::publish(&d.topic, &d.payload, d.qos.min(1), pkid, d.retain);
        let props = if self.v5 { d.props.map(|p| *p) } else { None };
        self.put(Packet::Publish(publish, props))
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
