//! SUBSCRIBE and UNSUBSCRIBE on both planes, the per-connection cap, and restoring a
//! persistent session. Chat filters go to the connection's chat session.

use super::*;

impl Conn {
    pub(super) async fn on_subscribe(
        &mut self,
        s: Subscribe,
        props: Option<SubscribeProperties>,
    ) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut general = Vec::new();
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
                    self.general.filters.insert(f.path.clone());
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
                SubscribeRoute::Chat(what) => {
                    if self.chat_subscribe(&f.path, what).await {
                        SubscribeReasonCode::Success(granted)
                    } else {
                        metrics::counter!(m::ACL_DENIALS, "action" => "subscribe").increment(1);
                        SubscribeReasonCode::NotAuthorized
                    }
                }
            };
            codes.push(Some(code));
        }
        let unset = SubscribeReasonCode::Unspecified;
        let to_engine = !general.is_empty();
        match answer_now(&mut self.general.subacks, s.pkid, codes, to_engine, unset) {
            Some(return_codes) => self.put(Packet::SubAck(
                SubAck {
                    pkid: s.pkid,
                    return_codes,
                },
                None,
            ))?,
            None => {
                let filters = general;
                let sub = Subscribe {
                    pkid: s.pkid,
                    filters,
                };
                self.send_to_engine(Packet::Subscribe(sub, props)).await?
            }
        }
        if let Some(chat) = self.chat.as_mut() {
            chat.settle();
        }
        Ok(())
    }

    /// Whether this connection may add `filter` under `mqtt.max_subscriptions` (a filter it
    /// already holds is replaced, not added).
    pub(super) fn may_hold_another(&self, filter: &str) -> bool {
        let chat = self.chat.as_deref();
        let held = self.general.filters.len() + chat.map_or(0, |c| c.held());
        held < self.state.config.mqtt.max_subscriptions
            || self.general.filters.contains(filter)
            || chat.is_some_and(|c| c.holds(filter))
    }

    /// Hands a chat filter the ACL accepted to the chat session; false when the user may not
    /// have it (not a member of the group, or no chat side at all).
    async fn chat_subscribe(&mut self, filter: &str, what: ChatFilter) -> bool {
        match self.chat.as_mut() {
            Some(chat) => chat.subscribe(filter, what).await,
            None => false,
        }
    }

    pub(super) async fn on_unsubscribe(
        &mut self,
        u: Unsubscribe,
        props: Option<UnsubscribeProperties>,
    ) -> Result<(), Close> {
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut general = Vec::new();
        for f in u.filters {
            if self.general.filters.remove(&f) {
                general.push(f);
                reasons.push(None);
            } else if self.chat.as_mut().is_some_and(|c| c.unsubscribe(&f)) {
                reasons.push(Some(UnsubAckReason::Success));
            } else {
                reasons.push(Some(UnsubAckReason::NoSubscriptionExisted));
            }
        }
        let unset = UnsubAckReason::Success;
        let to_engine = !general.is_empty();
        match answer_now(
            &mut self.general.unsubacks,
            u.pkid,
            reasons,
            to_engine,
            unset,
        ) {
            Some(reasons) => self.put(Packet::UnsubAck(
                UnsubAck {
                    pkid: u.pkid,
                    reasons,
                },
                None,
            )),
            None => {
                let filters = general;
                let unsub = Unsubscribe {
                    pkid: u.pkid,
                    filters,
                };
                self.send_to_engine(Packet::Unsubscribe(unsub, props)).await
            }
        }
    }

    /// Re-applies a persistent session's subscriptions.
    pub(super) async fn restore(&mut self, saved: SavedSession) {
        for f in saved.chat_filters {
            // The same checks as a SUBSCRIBE: membership may have changed meanwhile.
            if let SubscribeRoute::Chat(what) = self.state.acl.subscribe(&self.who(), &f) {
                self.chat_subscribe(&f, what).await;
            }
        }
        if !saved.general_filters.is_empty() {
            // Reopening the link with clean_session = false makes rumqttd restore its side.
            self.general.filters = saved.general_filters.into_iter().collect();
            if let Err(c) = self.ensure_link(false).await {
                warn!(?c, "could not restore the general-plane session");
            }
        }
        if let Some(chat) = self.chat.as_mut() {
            chat.settle();
        }
    }
}

/// The SUBACK/UNSUBACK codes to send now, or `None` when some filters went to the engine:
/// then the codes wait in `pending` (`None` slots for the engine's filters) until
/// [`merge_pending`] completes them from its answer.
fn answer_now<T: Copy>(
    pending: &mut VecDeque<PendingAck<T>>,
    pkid: u16,
    codes: Vec<Option<T>>,
    to_engine: bool,
    unset: T,
) -> Option<Vec<T>> {
    if to_engine {
        pending.push_back(PendingAck { pkid, codes });
        return None;
    }
    Some(codes.into_iter().map(|c| c.unwrap_or(unset)).collect())
}
