//! SUBSCRIBE and UNSUBSCRIBE on both planes, the per-connection cap, chat filters and the
//! catch-up they start, and restoring a persistent session.

use super::*;

impl Conn {
    pub(super) async fn on_subscribe(
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
    pub(super) fn may_hold_another(&self, filter: &str) -> bool {
        let held = self.general_filters.len() + self.chat_filters.len();
        held < self.state.config.mqtt.max_subscriptions
            || self.general_filters.contains(filter)
            || self.chat_filters.iter().any(|f| f == filter)
    }

    /// Registers a chat-plane filter (`route` from the ACL) for this connection and remembers
    /// it for the session. False when the user may not have it (not a member of the group).
    pub(super) async fn add_chat_filter(
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

    pub(super) fn remember_chat(&mut self, filter: &str) {
        if !self.chat_filters.iter().any(|f| f == filter) {
            self.chat_filters.push(filter.to_owned());
        }
    }

    /// Starts offline delivery and sends retained presence after chat subscriptions. One
    /// such task per connection: a newer SUBSCRIBE replaces a running one (what it had not
    /// pushed yet is still pending, and the new one starts from the oldest).
    pub(super) fn after_chat_subscribe(&mut self, started: ChatStarts) {
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

    pub(super) async fn on_unsubscribe(
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

    /// Re-applies a persistent session's subscriptions.
    pub(super) async fn restore(&mut self, saved: SavedSession) {
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
}
