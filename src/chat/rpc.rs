//! `out/rpc`: decode, run the op, answer on `in/rpc` (or a 5.0 response topic). Conversations
//! and history are here; group, profile and presence ops live with their concern.

use super::*;
use crate::protocol::HistoryAnchor;

impl ChatService {
    pub(super) async fn rpc(&self, client: &Client, payload: &[u8], reply: ReplyProps) {
        let me = client.user.as_str();
        let response = match decode_rpc(payload, &self.limits) {
            Err(e) => {
                metrics::counter!(m::CHAT_ERRORS, "code" => e.error.code.as_str()).increment(1);
                RpcResponse::err(e.rid, e.error)
            }
            Ok(req) => match self.run_rpc(me, req.op).await {
                Ok(result) => RpcResponse::ok(req.rid, result),
                Err(e) => {
                    metrics::counter!(m::CHAT_ERRORS, "code" => e.code.as_str()).increment(1);
                    RpcResponse::err(Some(req.rid), e)
                }
            },
        };
        let payload = self.encode(&response);
        // A 5.0 request may name its own response topic, inside the user's own in/ space.
        let own_in = protocol::user_in_prefix(me);
        let topic = match &reply.response_topic {
            Some(t) if client.v5 && t.starts_with(&own_in) && !t.contains(['+', '#']) => t.clone(),
            _ => user_in_topic(me, InKind::Rpc),
        };
        let mut d = Delivery::qos1(topic, payload);
        if client.v5 && reply.correlation_data.is_some() {
            d.props = Some(Box::new(rumqttd::protocol::PublishProperties {
                correlation_data: reply.correlation_data,
                ..Default::default()
            }));
        }
        if self
            .registry
            .deliver_conn(client.conn, &d, WhenFull::Disconnect)
            == Offer::Gone
        {
            // Not subscribed on this connection: any device of the user that listens gets it.
            self.registry.deliver_user(me, &d);
        }
    }

    /// One rpc op for `me`; each op is in the file of its concern.
    async fn run_rpc(&self, me: &str, op: RpcOp) -> Result<RpcResult, ChatError> {
        match op {
            RpcOp::Conversations { limit, before } => self.conversations(me, limit, before).await,
            RpcOp::History { conv, dir, limit } => self.history(me, conv, dir, limit).await,
            RpcOp::GroupCreate { name, members } => self.group_create(me, name, members).await,
            RpcOp::GroupAdd { gid, users } => self.group_add(me, gid, users).await,
            RpcOp::GroupRemove { gid, users } => self.group_remove(me, gid, users).await,
            RpcOp::GroupLeave { gid } => self.group_leave(me, gid).await,
            RpcOp::GroupInfo { gid } => self.group_info(me, gid).await,
            RpcOp::GroupList => self.group_list(me).await,
            RpcOp::ProfileSet(update) => self.profile_set(me, update).await,
            RpcOp::ProfileGet { users } => self.profile_get(me, users).await,
            RpcOp::PresenceGet { users } => self.presence_get(me, users).await,
        }
    }

    pub(super) async fn conversations(
        &self,
        me: &str,
        limit: u32,
        before: Option<i64>,
    ) -> Result<RpcResult, ChatError> {
        let rows = self.store.conversations(me, before, limit).await?;
        let conversations = rows
            .iter()
            .map(|s| ConversationOut::from_summary(me, s))
            .collect::<Result<_, _>>()?;
        Ok(RpcResult::Conversations(ConversationsOut { conversations }))
    }

    pub(super) async fn history(
        &self,
        me: &str,
        conv: ConvId,
        dir: HistoryAnchor,
        limit: u32,
    ) -> Result<RpcResult, ChatError> {
        if !self.participant(&conv, me).await? {
            return Err(ChatError::forbidden(format!("not a participant of {conv}")));
        }
        let started = Instant::now();
        let page = self.store.history(&conv, dir.into(), limit).await?;
        metrics::histogram!(m::STORE_LATENCY, "op" => "history")
            .record(started.elapsed().as_secs_f64());
        let mut out = HistoryOut::from_page(&conv, &page)?;
        if let Some(peer) = conv.kind().and_then(|k| k.peer_of(me)) {
            let c = self.store.cursors(peer, &conv).await?;
            out.peer_delivered_up_to = Some(c.delivered_up_to);
            out.peer_read_up_to = Some(c.read_up_to);
        }
        Ok(RpcResult::History(out))
    }
}
