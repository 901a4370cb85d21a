//! One connection's chat side ([`ChatSession`]): its chat filters, the order of its sends,
//! and the catch-up (offline push, retained presence) its subscriptions start.

use super::*;
use crate::acl::ChatFilter;
use crate::broker::{ChatSession, ChatTask};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One link of a connection's chain of sends. Dropping it passes the turn, so an early error
/// (or a connection that closes with sends still waiting) never blocks the ones behind it.
#[derive(Debug, Default)]
pub(super) struct Turn {
    prev: Option<oneshot::Receiver<()>>,
    next: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// A turn that waits for `prev` (if any) and is followed by the returned receiver.
    fn chained(prev: Option<oneshot::Receiver<()>>) -> (Turn, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Turn {
                prev,
                next: Some(tx),
            },
            rx,
        )
    }

    /// Waits until every earlier send of the connection has been handed to the store.
    pub(super) async fn wait(&mut self) {
        if let Some(prev) = self.prev.take() {
            // An error means the earlier send was dropped: its turn is over either way.
            let _ = prev.await;
        }
    }

    /// Lets the next send go.
    pub(super) fn pass(&mut self) {
        if let Some(next) = self.next.take() {
            let _ = next.send(());
        }
    }
}

/// What the filters added since the last `settle` start.
#[derive(Default)]
struct Starts {
    /// Offline delivery (the inbox is covered).
    inbox: bool,
    /// Users whose retained presence is sent.
    presence: Vec<String>,
}

pub(super) struct Session {
    svc: Arc<ChatService>,
    client: Client,
    filters: Vec<String>,
    /// The turn the next send waits for.
    last_send: Option<oneshot::Receiver<()>>,
    starts: Starts,
    /// The latest catch-up task, and whether it pushes the offline backlog. One at a time.
    catchup: Option<(JoinHandle<()>, bool)>,
}

impl Session {
    pub(super) fn new(svc: Arc<ChatService>, client: Client) -> Session {
        Session {
            svc,
            client,
            filters: Vec::new(),
            last_send: None,
            starts: Starts::default(),
            catchup: None,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some((task, _)) = self.catchup.take() {
            task.abort();
        }
    }
}

#[async_trait]
impl ChatSession for Session {
    fn publish(&mut self, kind: OutKind, payload: Bytes, reply: ReplyProps) -> ChatTask {
        // Sends are chained in arrival order (see `Turn`); other kinds run freely.
        let turn = if kind == OutKind::Send {
            let (turn, next) = Turn::chained(self.last_send.take());
            self.last_send = Some(next);
            turn
        } else {
            Turn::default()
        };
        let (svc, client) = (self.svc.clone(), self.client.clone());
        Box::pin(async move { svc.publish(&client, kind, payload, reply, turn).await })
    }

    fn denied(&self, topic: &str) {
        self.svc.ack_error(
            &self.client.user,
            None,
            ChatError::forbidden(format!("not allowed to publish to {topic}")),
        );
    }

    async fn subscribe(&mut self, filter: &str, what: ChatFilter) -> bool {
        let (registry, conn) = (&self.svc.registry, self.client.conn);
        match what {
            ChatFilter::User { inbox } => {
                registry.subscribe_user(conn, filter);
                self.starts.inbox |= inbox;
            }
            ChatFilter::Group { gid } => {
                let member = self.svc.store.is_member(&gid, &self.client.user).await;
                if !matches!(member, Ok(true)) {
                    return false;
                }
                registry.subscribe_group(conn, &gid, filter);
            }
            ChatFilter::Presence { user } => {
                registry.subscribe_presence(conn, &user);
                self.starts.presence.push(user);
            }
        }
        if !self.holds(filter) {
            self.filters.push(filter.to_owned());
        }
        true
    }

    /// One catch-up task per connection: a newer SUBSCRIBE replaces a running one (what it
    /// had not pushed yet is still pending, and the new one starts from the oldest).
    fn settle(&mut self) {
        let Starts {
            mut inbox,
            presence,
        } = std::mem::take(&mut self.starts);
        if !inbox && presence.is_empty() {
            return;
        }
        if let Some((running, pushing)) = self.catchup.take() {
            if !running.is_finished() {
                running.abort();
                // A replaced push starts again from the oldest pending message.
                inbox |= pushing;
            }
        }
        let (svc, client) = (self.svc.clone(), self.client.clone());
        let task = tokio::spawn(async move { svc.catch_up(&client, presence, inbox).await });
        self.catchup = Some((task, inbox));
    }

    fn unsubscribe(&mut self, filter: &str) -> bool {
        if !self.svc.registry.unsubscribe(self.client.conn, filter) {
            return false;
        }
        self.filters.retain(|f| f != filter);
        true
    }

    fn held(&self) -> usize {
        self.filters.len()
    }

    fn holds(&self, filter: &str) -> bool {
        self.filters.iter().any(|f| f == filter)
    }

    fn end(mut self: Box<Self>) -> Vec<String> {
        std::mem::take(&mut self.filters)
    }
}
