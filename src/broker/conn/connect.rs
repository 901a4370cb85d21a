//! The CONNECT handshake: version, authentication, client id, will, negotiated limits,
//! takeover, registration and CONNACK. [`connect`] runs the steps in order; each step is a
//! function below that either passes or names the CONNACK refusal.

use super::*;
use crate::auth::Identity;
use rumqttd::protocol::{Connect, ConnectProperties, Login};

/// Why the handshake ended without a connection: a CONNACK refusal (sent, then counted under
/// `label`), or a socket that never got that far (counted by `serve`).
enum Refused {
    Ack {
        code: ConnectReturnCode,
        label: Option<&'static str>,
    },
    Socket(&'static str),
}

impl Refused {
    fn ack(code: ConnectReturnCode, label: &'static str) -> Refused {
        Refused::Ack {
            code,
            label: Some(label),
        }
    }
}

/// What CONNECT carried, as the codec read it.
struct Hello {
    codec: Codec,
    version: Version,
    connect: Connect,
    props: Option<ConnectProperties>,
    will: Option<LastWill>,
    will_props: Option<LastWillProperties>,
    login: Option<Login>,
}

/// The client's ids: `raw_id` is the device id it chose (or we assigned), `namespaced` is
/// `{user}:{raw_id}`, so a takeover can only ever be by the same user.
struct Ids {
    user: Option<String>,
    raw_id: String,
    namespaced: String,
    assigned: Option<String>,
}

/// Keep-alive and session terms after the server's caps.
struct Terms {
    keep_alive: u16,
    server_keep_alive: Option<u16>,
    session_ttl: Duration,
    props: ConnectProperties,
}

/// Reads CONNECT, authenticates, answers CONNACK. `Ok(None)`: refused (CONNACK sent).
pub(super) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    conn_id: ConnId,
    peer: SocketAddr,
    state: &Arc<BrokerState>,
) -> Result<Option<Conn>, &'static str> {
    let hello = read_connect(io, &state.config.mqtt).await?;
    match handshake(io, conn_id, peer, state, hello).await {
        Ok(conn) => Ok(Some(conn)),
        Err((_, Refused::Socket(reason))) => Err(reason),
        Err((codec, Refused::Ack { code, label })) => {
            let ack = ConnAck {
                session_present: false,
                code,
            };
            let _ = codec.write(Packet::ConnAck(ack, None), &mut io.wbuf);
            let _ = io.flush().await;
            if let Some(label) = label {
                metrics::counter!(m::CONNECTS, "result" => label).increment(1);
            }
            Ok(None)
        }
    }
}

/// Everything after CONNECT was read; a refusal comes back with the codec to answer it.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    conn_id: ConnId,
    peer: SocketAddr,
    state: &Arc<BrokerState>,
    hello: Hello,
) -> Result<Conn, (Codec, Refused)> {
    let Hello {
        codec,
        version,
        connect,
        props,
        will,
        will_props,
        login,
    } = hello;
    let cfg = &state.config.mqtt;
    let v5 = version == Version::V5;
    let refuse = |codec, r| Err((codec, r));
    let identity = match authenticate(state, peer, login.as_ref()) {
        Ok(i) => i,
        Err(r) => return refuse(codec, r),
    };
    let Some(ids) = client_ids(&connect, conn_id, identity.as_ref(), v5) else {
        return refuse(
            codec,
            Refused::ack(ConnectReturnCode::ClientIdentifierNotValid, "bad_client_id"),
        );
    };
    let span = tracing::Span::current();
    span.record("user", ids.user.as_deref().unwrap_or("~anon"));
    span.record("device", ids.raw_id.as_str());
    let will = accept_will(state, &ids, will, will_props);
    let Some(terms) = negotiate(cfg, &connect, props, v5) else {
        return refuse(
            codec,
            Refused::Ack {
                code: ConnectReturnCode::BadAuthenticationMethod,
                label: None,
            },
        );
    };
    let (kick_rx, saved) = take_over(state, &ids.namespaced, conn_id, connect.clean_session).await;
    let out_rx = match register(state, conn_id, &ids) {
        Ok(rx) => rx,
        Err(r) => return refuse(codec, r),
    };
    let ack_props = v5.then(|| connack_properties(cfg, &terms, ids.assigned.clone()));
    let present = saved.is_some();
    if let Err(r) = write_connack(io, &codec, state, conn_id, &ids, present, ack_props).await {
        return refuse(codec, r);
    }
    debug!(version = ?version, keep_alive = terms.keep_alive, "connected");
    let accepted = Accepted {
        codec,
        v5,
        ids,
        terms,
        expires_at: identity.map(|i| i.expires_at),
        out_rx,
        kick_rx,
        will,
    };
    let mut conn = Conn::new(state.clone(), conn_id, accepted);
    if let Some(c) = &conn.client {
        conn.chat = Some(state.chat.clone().attach(c.clone()).await);
    }
    if let Some(saved) = saved {
        conn.restore(saved).await;
    }
    Ok(conn)
}

/// The accepting CONNACK; a socket that cannot take it gives back the registration.
async fn write_connack<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    codec: &Codec,
    state: &BrokerState,
    conn_id: ConnId,
    ids: &Ids,
    session_present: bool,
    props: Option<ConnAckProperties>,
) -> Result<(), Refused> {
    let ack = ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
    };
    if codec
        .write(Packet::ConnAck(ack, props), &mut io.wbuf)
        .is_err()
        || io.flush().await.is_err()
    {
        state.registry.unregister(conn_id);
        state.sessions.release(&ids.namespaced, conn_id);
        return Err(Refused::Socket("write_failed"));
    }
    metrics::counter!(m::CONNECTS, "result" => "ok").increment(1);
    Ok(())
}

/// Puts the connection in the chat-plane registry, under `mqtt.max_sessions_per_user`.
fn register(state: &BrokerState, conn_id: ConnId, ids: &Ids) -> Result<OutboxRx, Refused> {
    let cfg = &state.config.mqtt;
    let (outbox, out_rx) =
        crate::broker::registry::outbox(cfg.outbound_queue, cfg.outbound_queue_bytes);
    let user = ids.user.as_deref();
    if state
        .registry
        .register(conn_id, user, outbox, cfg.max_sessions_per_user)
    {
        return Ok(out_rx);
    }
    metrics::counter!(m::LIMITS_HIT, "limit" => "sessions").increment(1);
    info!(
        max = cfg.max_sessions_per_user,
        "connection refused: the user has too many sessions"
    );
    state.sessions.release(&ids.namespaced, conn_id);
    Err(Refused::ack(
        ConnectReturnCode::QuotaExceeded,
        "too_many_sessions",
    ))
}

/// What an accepted handshake settled, for [`Conn::new`].
struct Accepted {
    codec: Codec,
    v5: bool,
    ids: Ids,
    terms: Terms,
    /// The token's `exp` (unix seconds).
    expires_at: Option<u64>,
    out_rx: OutboxRx,
    kick_rx: oneshot::Receiver<oneshot::Sender<()>>,
    will: Option<Will>,
}

impl Conn {
    fn new(state: Arc<BrokerState>, conn_id: ConnId, a: Accepted) -> Conn {
        let cfg = &state.config.mqtt;
        let window = usize::from(
            cfg.max_inflight
                .min(a.terms.props.receive_maximum.unwrap_or(u16::MAX))
                .max(1),
        );
        let client = a.ids.user.as_ref().map(|u| Client {
            conn: conn_id,
            user: u.clone(),
            device: a.ids.raw_id.clone(),
            v5: a.v5,
        });
        // `exp` is client-supplied: a far-future one means no deadline, never an overflow.
        let token_deadline = a.expires_at.and_then(|exp| {
            Instant::now().checked_add(Duration::from_secs(exp.saturating_sub(unix_now())))
        });
        Conn {
            codec: a.codec,
            v5: a.v5,
            conn_id,
            client,
            raw_id: a.ids.raw_id,
            namespaced: a.ids.namespaced,
            keep_alive: a.terms.keep_alive,
            token_deadline,
            session_ttl: a.terms.session_ttl,
            out_rx: a.out_rx,
            kick_rx: a.kick_rx,
            general: General::default(),
            chat: None,
            inbound: Inbound::default(),
            outbound: Outbound {
                window,
                inflight: HashSet::new(),
                next_pkid: ROUTER_PKIDS,
            },
            aliases: HashMap::new(),
            will: a.will,
            wbuf: BytesMut::new(),
            state,
        }
    }
}

/// Waits (until `connect_timeout_ms`) for a whole CONNECT and reads it with the codec of
/// its protocol level. An unsupported level gets a 3.1.1 CONNACK 0x01, which every client
/// generation understands.
async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    cfg: &crate::config::MqttConfig,
) -> Result<Hello, &'static str> {
    let deadline = Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
    let version = loop {
        match Codec::detect(&io.rbuf, cfg.max_packet_size) {
            Ok(Some(v)) => break v,
            Ok(None) => {}
            Err(CodecError::UnsupportedLevel(_)) => {
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
    match codec.read(&mut io.rbuf) {
        Ok(Frame::Packet(Packet::Connect(connect, props, will, will_props, login), _)) => {
            Ok(Hello {
                codec,
                version,
                connect,
                props,
                will,
                will_props,
                login,
            })
        }
        _ => Err("protocol_error"),
    }
}

/// The user behind the credentials, `None` for an allowed anonymous client. A failure is
/// counted against the source address (`auth_throttle`).
fn authenticate(
    state: &BrokerState,
    peer: SocketAddr,
    login: Option<&Login>,
) -> Result<Option<Identity>, Refused> {
    let has_credentials = login.is_some_and(|l| !l.username.is_empty() || !l.password.is_empty());
    let identity = match login {
        Some(l) if has_credentials => state.auth.verify(&l.username, &l.password).map(Some),
        _ if state.config.auth.allow_anonymous => Ok(None),
        _ => Err(AuthError::Missing),
    };
    identity.map_err(|e| {
        metrics::counter!(m::AUTH_FAILURES, "reason" => e.label()).increment(1);
        state.auth_throttle.failed(peer.ip());
        info!(reason = %e, "login refused");
        match e {
            AuthError::Missing => Refused::ack(ConnectReturnCode::NotAuthorized, "not_authorized"),
            _ => Refused::ack(ConnectReturnCode::BadUserNamePassword, "bad_credentials"),
        }
    })
}

/// The client's ids; `None` for an empty client id with a persistent 3.1.1 session (5.0
/// clients get an assigned one).
fn client_ids(
    connect: &Connect,
    conn_id: ConnId,
    identity: Option<&Identity>,
    v5: bool,
) -> Option<Ids> {
    let mut assigned = None;
    let raw_id = if connect.client_id.is_empty() {
        if !connect.clean_session && !v5 {
            return None;
        }
        let id = format!("auto-{conn_id}-{:08x}", rand_u32());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    let user = identity.map(|i| i.user.clone());
    let namespaced = match &user {
        Some(u) => format!("{u}:{raw_id}"),
        // `~` cannot appear in a user id, so anonymous ids never collide with users'.
        None => format!("~anon:{raw_id}"),
    };
    Some(Ids {
        user,
        raw_id,
        namespaced,
        assigned,
    })
}

/// The will, if its topic is a general-plane topic this client may publish to; otherwise the
/// client connects without it.
fn accept_will(
    state: &BrokerState,
    ids: &Ids,
    will: Option<LastWill>,
    props: Option<LastWillProperties>,
) -> Option<Will> {
    let w = will?;
    let topic = std::str::from_utf8(&w.topic).ok()?;
    let who = Who {
        user: ids.user.as_deref(),
        client_id: &ids.raw_id,
    };
    match state.acl.publish(&who, topic) {
        PublishRoute::General => Some(Will {
            delay: Duration::from_secs(u64::from(
                props.as_ref().and_then(|p| p.delay_interval).unwrap_or(0),
            )),
            will: w,
            props,
        }),
        _ => {
            metrics::counter!(m::ACL_DENIALS, "action" => "will").increment(1);
            info!(topic, "will refused by ACL; connecting without it");
            None
        }
    }
}

/// Keep-alive (capped, also for 0) and session expiry (capped); `None` when the client asks
/// for enhanced authentication, which chatmq does not offer.
fn negotiate(
    cfg: &crate::config::MqttConfig,
    connect: &Connect,
    props: Option<ConnectProperties>,
    v5: bool,
) -> Option<Terms> {
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if cfg.max_keep_alive_secs > 0 && (keep_alive == 0 || keep_alive > cfg.max_keep_alive_secs) {
        keep_alive = cfg.max_keep_alive_secs;
        server_keep_alive = Some(keep_alive);
    }
    let props = props.unwrap_or_else(|| ConnectProperties {
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
        return None;
    }
    let session_ttl = if v5 {
        let asked = props.session_expiry_interval.unwrap_or(0);
        Duration::from_secs(u64::from(asked.min(cfg.max_session_expiry_secs)))
    } else if connect.clean_session {
        Duration::ZERO
    } else {
        Duration::from_secs(u64::from(cfg.max_session_expiry_secs))
    };
    Some(Terms {
        keep_alive,
        server_keep_alive,
        session_ttl,
        props,
    })
}

/// Makes this connection the owner of `namespaced`: the previous owner closes first (so its
/// session is saved and its engine link is gone), then a persistent session is taken over
/// or, for a clean start, discarded.
async fn take_over(
    state: &BrokerState,
    namespaced: &str,
    conn_id: ConnId,
    clean: bool,
) -> (oneshot::Receiver<oneshot::Sender<()>>, Option<SavedSession>) {
    let (kick_tx, kick_rx) = oneshot::channel();
    if let Some(old) = state.sessions.claim(namespaced, conn_id, kick_tx) {
        let (done_tx, done_rx) = oneshot::channel();
        if old.send(done_tx).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        }
    }
    let saved = if clean {
        state.sessions.discard(namespaced);
        None
    } else {
        state.sessions.take(namespaced)
    };
    (kick_rx, saved)
}

/// What a 5.0 CONNACK tells the client about the server's terms.
fn connack_properties(
    cfg: &crate::config::MqttConfig,
    terms: &Terms,
    assigned: Option<String>,
) -> ConnAckProperties {
    let ttl = terms.session_ttl.as_secs() as u32;
    ConnAckProperties {
        session_expiry_interval: (terms.props.session_expiry_interval.unwrap_or(0) != ttl)
            .then_some(ttl),
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
        server_keep_alive: terms.server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
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
