//! Where to connect and one MQTT connection driven by its own task.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

/// The broker under test and the client settings every connection shares.
#[derive(Clone, Debug)]
pub struct Target {
    /// Connection `i` goes to `hosts[i % len]` (several loopback addresses give more
    /// source ports for very many connections).
    pub hosts: Vec<String>,
    pub port: u16,
    pub keep_alive: Duration,
    pub inflight: u16,
    pub connect_timeout: Duration,
    pub nodelay: bool,
    /// Capacity of each client's request channel.
    pub queue: usize,
    /// CONNECT with clean_session = true (false: keep and resume the session).
    pub clean_session: bool,
}

impl Target {
    /// Refuses a host that is not loopback unless `allow_remote`.
    pub fn check_hosts(hosts: &[String], port: u16, allow_remote: bool) -> anyhow::Result<()> {
        if hosts.is_empty() {
            bail!("no --host given");
        }
        if allow_remote {
            return Ok(());
        }
        for h in hosts {
            if !is_loopback(h, port) {
                bail!("host `{h}` is not a loopback address; pass --allow-remote to load a remote broker");
            }
        }
        Ok(())
    }

    /// The same target, connecting with clean_session = false (keep and resume the session).
    pub fn persistent(&self) -> Target {
        Target {
            clean_session: false,
            ..self.clone()
        }
    }

    pub fn options(&self, i: usize, client_id: &str, login: Option<(&str, &str)>) -> MqttOptions {
        let host = &self.hosts[i % self.hosts.len()];
        let mut o = MqttOptions::new(client_id, host.as_str(), self.port);
        o.set_keep_alive(self.keep_alive)
            .set_inflight(self.inflight.max(1))
            .set_clean_session(self.clean_session)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        o
    }

    fn network(&self) -> NetworkOptions {
        let mut n = NetworkOptions::new();
        n.set_tcp_nodelay(self.nodelay);
        n.set_connection_timeout(self.connect_timeout.as_secs().max(1));
        n
    }
}

/// Loopback addresses only: 127.0.0.0/8, ::1, or a name that resolves only to them.
pub fn is_loopback(host: &str, port: u16) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// What a connection's task hands to the scenario's handler.
pub enum Inbound<'a> {
    Publish {
        topic: &'a str,
        payload: &'a [u8],
    },
    /// The broker acknowledged one of our QoS 1 publishes.
    PubAck,
}

/// Why a connection could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused(String),
    Timeout,
    Network(String),
    SubscribeDenied,
    /// No token could be had for the user.
    Token(String),
}

impl ConnectFailure {
    /// A short name for tallies.
    pub fn kind(&self) -> String {
        match self {
            ConnectFailure::Refused(c) => format!("refused:{c}"),
            ConnectFailure::Timeout => "timeout".into(),
            ConnectFailure::Network(_) => "network".into(),
            ConnectFailure::SubscribeDenied => "subscribe_denied".into(),
            ConnectFailure::Token(_) => "token".into(),
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Refused(c) => write!(f, "connection refused: {c}"),
            ConnectFailure::Timeout => write!(f, "timed out"),
            ConnectFailure::Network(e) => write!(f, "network: {e}"),
            ConnectFailure::SubscribeDenied => write!(f, "subscription denied"),
            ConnectFailure::Token(e) => write!(f, "token: {e}"),
        }
    }
}

impl From<ConnectionError> for ConnectFailure {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::ConnectionRefused(c) => ConnectFailure::Refused(format!("{c:?}")),
            ConnectionError::NetworkTimeout => ConnectFailure::Timeout,
            other => ConnectFailure::Network(other.to_string()),
        }
    }
}

/// How a connection's task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEnd {
    /// We disconnected it.
    Closed,
    /// It failed while we still wanted it.
    Dropped(String),
}

/// One live connection: a client handle plus the task polling its event loop.
pub struct Conn {
    pub client: AsyncClient,
    /// CONNECT → CONNACK (and SUBACK for the initial subscriptions).
    pub setup: Duration,
    /// The CONNACK said the broker resumed a session.
    pub session_present: bool,
    subacks: Mutex<mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>>,
    closing: Arc<AtomicBool>,
    task: JoinHandle<ConnEnd>,
}

impl Conn {
    /// Connects, subscribes to `subs` (waiting for the SUBACK) and hands everything that
    /// arrives, from the first packet on, to `handler`, which runs on the connection's task.
    pub async fn open<H>(
        target: &Target,
        opts: MqttOptions,
        subs: Vec<SubscribeFilter>,
        mut handler: H,
    ) -> Result<Conn, ConnectFailure>
    where
        H: FnMut(Inbound<'_>) + Send + 'static,
    {
        let start = Instant::now();
        let (client, mut el) = AsyncClient::new(opts, target.queue.max(1));
        el.set_network_options(target.network());
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let deadline = tokio::time::Instant::now() + target.connect_timeout;

        let mut session_present = false;
        let setup = async {
            loop {
                match el.poll().await? {
                    Event::Incoming(Packet::ConnAck(ack)) => {
                        session_present = ack.session_present;
                        break;
                    }
                    Event::Incoming(other) => dispatch(&other, &mut handler, &sub_tx),
                    Event::Outgoing(_) => {}
                }
            }
            if !subs.is_empty() {
                let n = subs.len();
                // The request channel is empty right after CONNACK: this does not wait.
                client
                    .subscribe_many(subs)
                    .await
                    .map_err(|e| ConnectFailure::Network(e.to_string()))?;
                loop {
                    match el.poll().await? {
                        Event::Incoming(Packet::SubAck(ack)) => {
                            if ack.return_codes.len() != n
                                || ack
                                    .return_codes
                                    .iter()
                                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                            {
                                return Err(ConnectFailure::SubscribeDenied);
                            }
                            break;
                        }
                        Event::Incoming(other) => dispatch(&other, &mut handler, &sub_tx),
                        Event::Outgoing(_) => {}
                    }
                }
            }
            Ok::<(), ConnectFailure>(())
        };
        match tokio::time::timeout_at(deadline, setup).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ConnectFailure::Timeout),
        }
        let setup = start.elapsed();
        let closing = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(drive(el, handler, sub_tx, closing.clone()));
        Ok(Conn {
            client,
            setup,
            session_present,
            subacks: Mutex::new(sub_rx),
            closing,
            task,
        })
    }

    /// Subscribes after setup and waits for the SUBACK.
    pub async fn subscribe(&self, filters: Vec<String>, timeout: Duration) -> anyhow::Result<()> {
        let n = filters.len();
        let subs = filters
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
        let mut rx = self.subacks.lock().await;
        self.client.subscribe_many(subs).await?;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(codes)) if codes.len() == n => {
                if codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    bail!("subscription denied");
                }
                Ok(())
            }
            Ok(Some(_)) => bail!("SUBACK with the wrong number of codes"),
            Ok(None) => bail!("connection closed before SUBACK"),
            Err(_) => bail!("no SUBACK within {timeout:?}"),
        }
    }

    /// True while the connection's task is running.
    pub fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// Disconnects cleanly and waits (briefly) for the task.
    pub async fn close(self) -> ConnEnd {
        if self.task.is_finished() {
            return self.task.await.unwrap_or(ConnEnd::Closed);
        }
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(Duration::from_secs(3), self.task).await {
            Ok(Ok(end)) => end,
            Ok(Err(_)) => ConnEnd::Closed,
            Err(_) => {
                abort.abort();
                ConnEnd::Closed
            }
        }
    }
}

fn dispatch<H: FnMut(Inbound<'_>)>(
    p: &Packet,
    handler: &mut H,
    sub_tx: &mpsc::UnboundedSender<Vec<SubscribeReasonCode>>,
) {
    match p {
        Packet::Publish(p) => handler(Inbound::Publish {
            topic: &p.topic,
            payload: &p.payload,
        }),
        Packet::PubAck(_) => handler(Inbound::PubAck),
        Packet::SubAck(a) => {
            let _ = sub_tx.send(a.return_codes.clone());
        }
        _ => {}
    }
}

async fn drive<H: FnMut(Inbound<'_>)>(
    mut el: EventLoop,
    mut handler: H,
    sub_tx: mpsc::UnboundedSender<Vec<SubscribeReasonCode>>,
    closing: Arc<AtomicBool>,
) -> ConnEnd {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(p)) => dispatch(&p, &mut handler, &sub_tx),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return ConnEnd::Closed,
            Ok(Event::Outgoing(_)) => {}
            // Polling again would reconnect with a new session; a load test reports the
            // drop instead.
            Err(_) if closing.load(Ordering::Relaxed) => return ConnEnd::Closed,
            Err(e) => return ConnEnd::Dropped(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_guard() {
        assert!(is_loopback("127.0.0.1", 1883));
        assert!(is_loopback("127.0.0.2", 1883));
        assert!(is_loopback("::1", 1883));
        assert!(is_loopback("localhost", 1883));
        assert!(!is_loopback("10.0.0.1", 1883));
        assert!(!is_loopback("0.0.0.0", 1883));
        assert!(Target::check_hosts(&["10.1.1.1".into()], 1883, false).is_err());
        assert!(Target::check_hosts(&["10.1.1.1".into()], 1883, true).is_ok());
        assert!(Target::check_hosts(&["127.0.0.1".into()], 1883, false).is_ok());
    }
}
