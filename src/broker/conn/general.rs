//! The general plane: this connection's link to the embedded rumqttd router.

use super::*;

impl Conn {
    /// Sends a packet to the engine, opening this connection's link on first use.
    pub(super) async fn send_to_engine(&mut self, packet: Packet) -> Result<(), Close> {
        self.ensure_link(self.session_ttl.is_zero()).await?;
        match self.general.link.as_mut() {
            Some(link) => link.send(packet).await.map_err(|_| Close::Engine),
            None => Err(Close::Engine),
        }
    }

    /// Opens this connection's engine link if it has none; `clean` = no session to keep.
    pub(super) async fn ensure_link(&mut self, clean: bool) -> Result<(), Close> {
        if self.general.link.is_none() {
            let link = self
                .state
                .engine
                .open(&self.namespaced, clean)
                .await
                .map_err(|e| {
                    warn!(error = %e, "engine link refused");
                    Close::Engine
                })?;
            self.general.link = Some(link);
        }
        Ok(())
    }

    pub(super) fn on_engine(&mut self, n: Notification) -> Result<(), Close> {
        match n {
            Notification::Forward(f) => {
                metrics::counter!(m::MESSAGES, "plane" => "general", "kind" => "delivery")
                    .increment(1);
                self.put(Packet::Publish(f.publish, f.properties))
            }
            Notification::DeviceAck(ack) => match Packet::from(ack) {
                Packet::SubAck(s, props) => {
                    let codes = merge_pending(
                        &mut self.general.subacks,
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
                        &mut self.general.unsubacks,
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
}
