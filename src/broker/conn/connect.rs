//! The CONNECT handshake: version, authentication, client id, will, negotiated limits,
//! takeover, registration and CONNACK.

use super::*;

/// Reads CONNECT, authenticates, answers CONNACK. `Ok(None)`: refused (CONNACK sent).
pub(super) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
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
    let (outbox, out_rx) =
        crate::broker::registry::outbox(cfg.outbound_queue, cfg.outbound_queue_bytes);
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

pub(super) fn rand_u32() -> u32 {
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
