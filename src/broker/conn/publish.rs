//! Inbound PUBLISH: routing by the ACL, chat publishes in processing (bounded, acked in
//! arrival order), denials, and the PUBACK/PUBREC that follows each.

use super::*;

impl Conn {
    pub(super) async fn on_publish(
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
                let Some(chat) = self.chat.as_mut() else {
                    return self.deny_publish(h, DenyReason::NotAuthorized, topic.to_owned());
                };
                metrics::counter!(m::MESSAGES, "plane" => "chat", "kind" => kind.as_str())
                    .increment(1);
                let reply = ReplyProps::from_props(props.as_ref());
                let parked = ParkedChat {
                    pkid: h.pkid,
                    qos: h.qos,
                    task: chat.publish(kind, p.payload, reply),
                };
                // QoS 0 (typing) takes a slot like the rest, so a flood of it is bounded too;
                // it simply has nothing to acknowledge.
                if self.inbound.running.len() < MAX_INBOUND && self.inbound.parked.is_empty() {
                    self.inbound.running.push_back(run_chat(parked));
                } else {
                    self.inbound.parked.push_back(parked);
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

    /// Moves parked chat publishes into free processing slots, in arrival order.
    pub(super) fn unpark(&mut self) {
        while self.inbound.running.len() < MAX_INBOUND {
            let Some(parked) = self.inbound.parked.pop_front() else {
                break;
            };
            self.inbound.running.push_back(run_chat(parked));
        }
    }

    pub(super) fn deny_publish(
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
            if let Some(chat) = &self.chat {
                chat.denied(&topic);
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
                    self.inbound.qos2.insert(h.pkid);
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
    pub(super) fn finish_inbound(
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
                self.inbound.qos2.insert(pkid);
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
}

/// Starts a chat publish in a processing slot.
fn run_chat(parked: ParkedChat) -> InboundTask {
    let ParkedChat { pkid, qos, task } = parked;
    InboundTask {
        pkid,
        qos,
        handle: tokio::spawn(task),
    }
}
