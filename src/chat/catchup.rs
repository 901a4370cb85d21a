//! Catch-up after a chat SUBSCRIBE: the retained presence of the users it covers, and the
//! undelivered DMs a device gets when it subscribes its inbox.

use super::*;

impl ChatService {
    /// Sends `presence` users' current presence (retained) to one connection, then, with
    /// `inbox`, its user's offline backlog. Run as the session's catch-up task.
    pub(super) async fn catch_up(&self, client: &Client, presence: Vec<String>, inbox: bool) {
        for user in presence {
            if let Ok(out) = self.current_presence(&user).await {
                let d = Delivery {
                    topic: Bytes::from(presence_topic(&user)),
                    payload: self.encode(&out),
                    qos: 1,
                    retain: true,
                    props: None,
                };
                self.registry.send_to(client.conn, d);
            }
        }
        if inbox {
            self.push_offline(client).await;
        }
    }

    /// Pushes `client.user`'s undelivered DMs to one connection, oldest first, a page at a
    /// time. This push is the connection's own backlog, so it is the one producer that waits
    /// for room in the queue (without ever closing the connection for it); what it cannot
    /// push stays pending for the next inbox subscribe.
    async fn push_offline(&self, client: &Client) {
        let page = self.offline_page;
        let mut after = 0u64;
        let mut pushed = 0u64;
        if let Ok(backlog) = self.store.pending_count(&client.user).await {
            metrics::histogram!(m::OFFLINE_BACKLOG).record(backlog as f64);
            if backlog == 0 {
                return;
            }
        }
        'pages: loop {
            let batch = match self.store.pending(&client.user, after, page).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "offline push: store error");
                    break;
                }
            };
            for msg in &batch {
                after = msg.id;
                let Ok(out) = MessageOut::from_stored(msg) else {
                    continue;
                };
                let d = Delivery::qos1(user_in_topic(&client.user, InKind::Msg), self.encode(&out));
                let mut stalled = Duration::ZERO;
                loop {
                    match self.registry.deliver_conn(client.conn, &d, WhenFull::Skip) {
                        Offer::Queued => break,
                        Offer::Gone => break 'pages,
                        Offer::Full if stalled >= OFFLINE_DRAIN_WAIT => {
                            debug!(pushed, "offline push: connection did not drain; stopping");
                            break 'pages;
                        }
                        Offer::Full => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            stalled += Duration::from_millis(5);
                        }
                    }
                }
                pushed += 1;
            }
            if batch.len() < page as usize {
                break;
            }
        }
        if pushed > 0 {
            metrics::counter!(m::OFFLINE_PUSHED).increment(pushed);
            debug!(pushed, "offline messages pushed");
        }
    }
}
