//! Offline catch-up: the undelivered DMs a device gets when it subscribes its inbox.

use super::*;

impl ChatService {
    /// Pushes `client.user`'s undelivered DMs to one connection, oldest first, a page at a
    /// time. This push is the connection's own backlog, so it is the one producer that waits
    /// for room in the queue (without ever closing the connection for it); what it cannot
    /// push stays pending for the next inbox subscribe.
    pub(super) async fn push_offline(&self, client: &Client) {
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
