//! `out/send`: a message is checked, stored (exactly once per cid), acknowledged and fanned out.

use super::*;

impl ChatService {
    /// `Ok` only once the message is durably stored (or was stored before: a resent cid).
    pub(super) async fn send(
        &self,
        client: &Client,
        payload: &[u8],
        mut turn: Turn,
    ) -> Result<(), Refusal> {
        let received = Instant::now();
        let me = client.user.as_str();
        let req = match decode_send(payload, &self.limits) {
            Ok(r) => r,
            Err(AckError { cid, error }) => return Err(self.ack_error(me, cid, error)),
        };
        let cid = Some(req.cid.clone());
        let Some(conv) = req.to.conv(me) else {
            return Err(self.ack_error(
                me,
                cid,
                ChatError::bad_request("cannot send a message to yourself"),
            ));
        };
        if let Target::Group(gid) = &req.to {
            match self.is_member(gid, me).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(self.ack_error(
                        me,
                        cid,
                        ChatError::forbidden(format!("not a member of group {gid}")),
                    ))
                }
                Err(e) => return Err(self.ack_error(me, cid, e)),
            }
        }
        let body = encode_body(&req.body);
        // Store requests are queued in the order their futures are first polled: wait for the
        // connection's earlier sends to be queued, queue this one, then let the next one go.
        // The id is taken inside the turn too, so ids follow seqs within a conversation.
        turn.wait().await;
        let started = Instant::now();
        let ts = now_ms();
        let msg = NewMessage {
            id: self.ids.next(ts),
            conv: conv.clone(),
            from: me.to_owned(),
            ts,
            cid: req.cid.clone(),
            body,
            reply_to: req.reply_to.map(|id| id.0),
        };
        let mut append = std::pin::pin!(self.store.append_message(msg));
        let first_poll = futures_util::FutureExt::now_or_never(&mut append);
        turn.pass();
        let appended = match first_poll {
            Some(done) => done,
            None => append.await,
        };
        metrics::histogram!(m::STORE_LATENCY, "op" => "append")
            .record(started.elapsed().as_secs_f64());
        self.health.write_result(&appended);
        let appended = match appended {
            Ok(a) => a,
            Err(e) => return Err(self.ack_error(me, cid, e.into())),
        };
        // The durability promise: this ack (and the PUBACK) go out only after the commit.
        let stored = appended.message();
        self.to_user(me, InKind::Ack, &SentAck::of(stored));
        // A resend answered from the dedup index is fanned out again: the first attempt may
        // have been committed just before a crash, with its fan-out lost. Devices that got it
        // the first time see a seq they hold and drop it (PROTOCOL.md, "Completeness").
        if let Appended::Duplicate(_) = &appended {
            metrics::counter!(m::RESENT_FANOUTS).increment(1);
        }
        self.fan_out(me, appended.message(), received);
        self.activity(me, false).await;
        Ok(())
    }

    /// Delivers a stored message to its recipients (and the sender's other devices), by its
    /// conversation.
    fn fan_out(&self, me: &str, stored: &StoredMessage, received: Instant) {
        let out = match MessageOut::from_stored(stored) {
            Ok(out) => out,
            Err(e) => {
                warn!(error = %e, "stored message could not be rendered");
                return;
            }
        };
        let payload = self.encode(&out);
        match stored.conv.kind() {
            Some(ConvKind::Direct { a, b }) => {
                let peer = if a == me { b } else { a };
                let d = Delivery::qos1(user_in_topic(peer, InKind::Msg), payload.clone());
                self.registry.deliver_user(peer, &d);
                if peer != me {
                    let d = Delivery::qos1(user_in_topic(me, InKind::Msg), payload);
                    self.registry.deliver_user(me, &d);
                }
            }
            Some(ConvKind::Group { gid }) => {
                let d = Delivery::qos1(group_topic(gid, GroupKind::Msg), payload);
                self.registry.deliver_group(gid, &d);
            }
            None => return,
        }
        metrics::histogram!(m::DELIVERY_LATENCY).record(received.elapsed().as_secs_f64());
    }
}
