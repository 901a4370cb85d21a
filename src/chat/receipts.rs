//! `out/receipt` (delivered/read markers) and `out/typing` (best-effort indicators).

use super::*;

impl ChatService {
    /// `Ok` only once the cursor is durably stored.
    pub(super) async fn receipt(&self, client: &Client, payload: &[u8]) -> Result<(), Refusal> {
        let me = client.user.as_str();
        let req = match decode_receipt(payload, &self.limits) {
            Ok(r) => r,
            Err(e) => return Err(self.ack_error(me, None, e)),
        };
        match self.participant(&req.conv, me).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(self.ack_error(
                    me,
                    None,
                    ChatError::forbidden(format!("not a participant of {}", req.conv)),
                ))
            }
            Err(e) => return Err(self.ack_error(me, None, e)),
        }
        let moved = self
            .store
            .set_cursor(me, &req.conv, req.kind.into(), req.up_to)
            .await;
        self.health.write_result(&moved);
        let moved = match moved {
            Ok(m) => m,
            Err(e) => return Err(self.ack_error(me, None, e.into())),
        };
        if moved.moved {
            let out = ReceiptOut {
                conv: req.conv.clone(),
                by: me.to_owned(),
                kind: req.kind,
                up_to: moved.value,
                ts: now_ms(),
            };
            match req.conv.kind() {
                Some(ConvKind::Direct { .. }) => {
                    if let Some(peer) = req.conv.kind().and_then(|k| k.peer_of(me)) {
                        self.to_user(peer, InKind::Receipt, &out);
                    }
                    // My other devices learn what I have read.
                    self.to_user(me, InKind::Receipt, &out);
                }
                Some(ConvKind::Group { gid }) => {
                    let small = match self.store.group(gid).await {
                        Ok(Some(g)) => g.member_count <= self.group_receipts_max,
                        _ => false,
                    };
                    if small {
                        self.to_group(gid, GroupKind::Receipt, &out, 1);
                    }
                }
                None => {}
            }
        }
        self.activity(me, false).await;
        Ok(())
    }

    pub(super) async fn typing(&self, client: &Client, payload: &[u8]) {
        let me = client.user.as_str();
        // Typing is fire-and-forget (QoS 0): a bad indicator is dropped without an answer.
        let Ok(req) = decode_typing(payload, &self.limits) else {
            return;
        };
        if !self.typing.allow(&client.user) {
            // Typing is best effort: over the limit it is dropped without an answer.
            return;
        }
        let Some(conv) = req.to.conv(me) else { return };
        let out = TypingOut {
            conv,
            from: me.to_owned(),
            state: req.state,
        };
        match &req.to {
            Target::User(peer) => {
                let mut d = Delivery::qos1(user_in_topic(peer, InKind::Typing), self.encode(&out));
                d.qos = 0;
                self.registry.deliver_user(peer, &d);
            }
            Target::Group(gid) => {
                if matches!(self.is_member(gid, me).await, Ok(true)) {
                    self.to_group(gid, GroupKind::Typing, &out, 0);
                }
            }
        }
        self.activity(me, false).await;
    }
}
