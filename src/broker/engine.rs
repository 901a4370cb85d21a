//! The embedded rumqttd router that serves the general (non-chat) plane.
//!
//! Each client connection that uses a general topic gets its own in-process link to the
//! router (`LinkBuilder`), opened lazily, so rumqttd keeps its MQTT semantics there:
//! wildcards, retained messages, `$share` groups, QoS 2. Chat traffic never enters the
//! router (see ENGINE.md in the project's reference notes: its per-topic filter scan does not
//! scale to one inbox topic per user).

use crate::config::EngineConfig;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{LastWill, LastWillProperties, Packet, Publish, PublishProperties};
use rumqttd::{Notification, Router, RouterConfig};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A publish made by the broker itself: (publish with QoS 0 header, QoS wanted, properties).
type SystemPublish = (Publish, u8, Option<PublishProperties>);

type BuildLink =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx), Box<LinkError>> + Send + Sync + 'static;

/// Whether the router's inbound channel is full (a send would block the calling thread).
type RouterFull = dyn Fn() -> bool + Send + Sync + 'static;

#[derive(Clone)]
pub struct Engine {
    // The router's sender type is unnameable (its event type is private), so it lives
    // captured inside this closure.
    build: Arc<BuildLink>,
    router_full: Arc<RouterFull>,
    system: mpsc::UnboundedSender<SystemPublish>,
}

/// A connection's link to the router: packets go in through `tx`; router notifications
/// (forwards, acks, disconnects) come out of `events`.
pub struct GeneralLink {
    pub tx: LinkTx,
    pub events: mpsc::Receiver<Notification>,
    pump: tokio::task::JoinHandle<()>,
    router_full: Arc<RouterFull>,
}

impl GeneralLink {
    /// Sends a client packet to the router.
    ///
    /// `LinkTx::send` is `async` in name only: it pushes to a buffer and does a blocking send
    /// on the router's bounded channel. That channel is only full when the router thread is
    /// saturated; we wait for room asynchronously first, so a runtime thread is never blocked
    /// and the backpressure still reaches general-plane publishers.
    pub async fn send(&mut self, packet: Packet) -> Result<(), LinkError> {
        while (self.router_full)() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.tx.send(packet).await.map(|_| ())
    }

    /// Leaves the router cleanly: a DISCONNECT makes it drop the connection (and keep its
    /// session when the link was opened with clean_session = false).
    pub async fn close(mut self) {
        let disconnect = Packet::Disconnect(
            rumqttd::protocol::Disconnect {
                reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        let _ = self.tx.send(disconnect).await;
        self.pump.abort();
    }
}

impl Engine {
    pub fn start(cfg: &EngineConfig) -> Result<Engine, Box<LinkError>> {
        let router_cfg = RouterConfig {
            max_connections: cfg.max_connections,
            max_outgoing_packet_count: cfg.max_outgoing_packet_count,
            max_segment_size: cfg.max_segment_size,
            max_segment_count: cfg.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, router_cfg).spawn();
        let probe = router_tx.clone();
        let router_full: Arc<RouterFull> = Arc::new(move || probe.is_full());
        let build: Arc<BuildLink> = Arc::new(move |client_id: &str, clean: bool| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                .build()
                .map(|(tx, rx, _connack)| (tx, rx))
                .map_err(Box::new)
        });

        // The system link publishes on the broker's behalf (wills).
        let (tx, rx) = build("chatmq-system", true)?;
        let (system, mut queue) = mpsc::unbounded_channel::<SystemPublish>();
        std::thread::Builder::new()
            .name("chatmq-system-link".into())
            .spawn(move || system_link(tx, rx, &mut queue))
            .map_err(|_| Box::new(LinkError::NotConnectionAck))?;
        Ok(Engine {
            build,
            router_full,
            system,
        })
    }

    /// Opens a link for `client_id` (the namespaced id, made router-safe here).
    /// Runs the router handshake on a blocking thread: `LinkBuilder::build` waits on a
    /// synchronous channel.
    pub async fn open(&self, client_id: &str, clean: bool) -> Result<GeneralLink, Box<LinkError>> {
        let build = self.build.clone();
        let id = router_client_id(client_id);
        let (tx, mut rx) = tokio::task::spawn_blocking(move || build(&id, clean))
            .await
            .map_err(|_| Box::new(LinkError::NotConnectionAck))??;
        let (events_tx, events) = mpsc::channel(256);
        let pump = tokio::spawn(async move {
            loop {
                match rx.next().await {
                    Ok(Some(Notification::Unschedule)) => {
                        // The router paused this link because its buffer filled up; what it
                        // had is now queued towards the connection, so ask for more.
                        if rx.wake().await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(n)) => {
                        if events_tx.send(n).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => continue,
                    Err(_) => break,
                }
            }
        });
        Ok(GeneralLink {
            tx,
            events,
            pump,
            router_full: self.router_full.clone(),
        })
    }

    /// Publishes on the general plane on the broker's behalf (a will message).
    pub fn publish_will(&self, will: &LastWill, props: Option<&LastWillProperties>) {
        let publish = Publish::new(will.topic.clone(), will.message.clone(), will.retain);
        let props = props.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: None,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            subscription_identifiers: vec![],
            content_type: p.content_type.clone(),
        });
        let _ = self.system.send((publish, will.qos as u8, props));
    }
}

/// The router refuses client ids containing `+ $ # /`; MQTT allows them. Escape those (and
/// `%`, to stay unambiguous) so every client id maps to a distinct router id.
pub fn router_client_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '+' | '$' | '#' | '/' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn system_link(mut tx: LinkTx, mut rx: LinkRx, queue: &mut mpsc::UnboundedReceiver<SystemPublish>) {
    // Acks for the system link's QoS 1 publishes are read and discarded on a helper thread
    // so the router never pauses this link.
    std::thread::Builder::new()
        .name("chatmq-system-acks".into())
        .spawn(move || loop {
            match rx.recv() {
                Ok(Some(Notification::Unschedule)) => {
                    if rx.ready().is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        })
        .ok();
    let mut pkid: u16 = 0;
    while let Some((publish, qos, props)) = queue.blocking_recv() {
        pkid = pkid % 60_000 + 1;
        let publish = super::codec::with_qos(&publish, qos, pkid);
        let fut = tx.send(Packet::Publish(publish, props));
        // LinkTx::send never awaits (see GeneralLink::send), so polling once completes it.
        if futures_util::FutureExt::now_or_never(fut).is_none() {
            tracing::warn!("system link send did not complete");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_ids_are_escaped_and_distinct() {
        assert_eq!(router_client_id("alice:phone"), "alice:phone");
        assert_eq!(router_client_id("alice:a/b"), "alice:a%2Fb");
        assert_ne!(router_client_id("a%2F"), router_client_id("a/"));
        assert!(!router_client_id("x+$#/").contains(['+', '$', '#', '/']));
    }
}
