//! Phase 2 of `offline`: the reconnect storm, the recipients' backlogs and the probe.

use super::*;

/// A recipient's backlog as it arrives.
#[derive(Default)]
pub(super) struct Backlog {
    pub(super) seen: HashSet<u64>,
    /// Per conversation: highest seq received, messages since the last receipt.
    pub(super) convs: HashMap<String, (u64, u64)>,
    pub(super) received: u64,
    pub(super) expected: u64,
    pub(super) reordered: u64,
    pub(super) connect_ns: u64,
    pub(super) done_ns: Option<u64>,
    pub(super) client: Option<AsyncClient>,
}

impl Backlog {
    /// Sends a receipt for every conversation with unconfirmed messages, once connected.
    fn flush(&mut self, me: &str) {
        let Some(client) = &self.client else { return };
        for (conv, (max, since)) in self.convs.iter_mut() {
            if *since > 0 {
                chat::spawn_receipt(client, me, conv, *max);
                *since = 0;
            }
        }
    }
}

/// The storm's times.
pub(super) struct StormTimes {
    pub(super) start_ns: u64,
    pub(super) connected_ns: u64,
    pub(super) end_ns: u64,
    /// Every backlog done (and, unless `--no-receipt-check`, every conversation confirmed).
    pub(super) drained: bool,
    pub(super) setup: Latency,
}

pub(super) struct Storm {
    pub(super) conns: Vec<crate::conn::Conn>,
    pub(super) backlogs: Vec<Arc<Mutex<Backlog>>>,
    pub(super) times: StormTimes,
}

impl Offline<'_> {
    /// Phase 2: every recipient connects (or resumes its session) at `--storm-rate` and
    /// gets its backlog; the probe runs until every backlog is done and receipted.
    pub(super) async fn storm(
        &self,
        senders: &[crate::conn::Conn],
        expect: &Expect,
    ) -> anyhow::Result<Storm> {
        let (env, args, clock) = (self.env, self.args, self.env.clock);
        let backlogs: Vec<Arc<Mutex<Backlog>>> = expect
            .per_user
            .iter()
            .map(|&e| {
                Arc::new(Mutex::new(Backlog {
                    expected: e,
                    ..Default::default()
                }))
            })
            .collect();
        let done = Counter::default();
        // Recipients none of whose messages were acked have nothing to wait for.
        let nothing_expected = expect.per_user.iter().filter(|&&e| e == 0).count() as u64;
        let p = &env.progress;
        p.rate("delivered", &self.stats.delivered);
        p.gauge("drained users", &done);
        p.gauge("receipted convs", &self.covered);
        p.phase("reconnect storm");
        let start_ns = clock.now_ns();
        let probe = Probe::start(self, senders);
        let results = open_many(
            args.users,
            env.common.connect_concurrency,
            args.storm_rate,
            clock,
            |i| self.reconnect(i, backlogs[i].clone(), done.clone()),
        )
        .await;
        let connected_ns = clock.now_ns();
        let conns = chat::all_connected(results, &self.recipients)?;
        let mut setup = Latency::new();
        for c in &conns {
            setup.record_ns(c.setup.as_nanos() as u64);
        }
        let check_receipts = !args.no_receipt_check;
        let drained = wait_for(secs(args.drain), || {
            done.get() + nothing_expected >= args.users as u64
                && (!check_receipts || self.covered.get() >= expect.convs)
        })
        .await;
        let end_ns = clock.now_ns();
        if let Some(probe) = probe {
            probe.stop(&self.outboxes[0]).await;
        }
        Ok(Storm {
            conns,
            backlogs,
            times: StormTimes {
                start_ns,
                connected_ns,
                end_ns,
                drained,
                setup,
            },
        })
    }

    /// Recipient `i` connects (or resumes) and receipts its backlog as it arrives.
    fn reconnect(
        &self,
        i: usize,
        backlog: Arc<Mutex<Backlog>>,
        done: Counter,
    ) -> impl std::future::Future<Output = Result<crate::conn::Conn, crate::conn::ConnectFailure>>
           + Send
           + 'static {
        let (me, token) = (self.recipients[i].clone(), self.recipient_tokens[i].clone());
        let (target, connected, stats) = (
            self.env.target.clone(),
            self.connected.clone(),
            self.stats.clone(),
        );
        let (clock, every) = (self.env.clock, self.args.receipt_every.max(1));
        let (n, persistent) = (self.args.senders + i, self.args.persistent);
        async move {
            let (me2, b2) = (me.clone(), backlog.clone());
            b2.lock().unwrap_or_else(PoisonError::into_inner).connect_ns = clock.now_ns();
            let handler = move |ev: Inbound<'_>| {
                let Inbound::Publish { topic, payload } = ev else {
                    return;
                };
                if classify(topic) == InboundKind::Msg {
                    on_message(
                        &me2,
                        payload,
                        clock.now_ns(),
                        every,
                        &backlog,
                        &stats,
                        &done,
                    );
                }
            };
            let c = if persistent {
                chat::resume_user(&target, n, &me, &token, handler).await
            } else {
                chat::open_user(&target, n, &me, &token, &[], handler).await
            };
            if let Ok(c) = &c {
                connected.inc();
                let mut b = b2.lock().unwrap_or_else(PoisonError::into_inner);
                b.client = Some(c.client.clone());
                b.flush(&me);
            }
            c
        }
    }
}

/// Sender 0 → sender 1, one DM every 100 ms while the storm runs.
struct Probe {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Probe {
    fn start(o: &Offline<'_>, senders: &[crate::conn::Conn]) -> Option<Probe> {
        if o.args.senders < 2 {
            return None;
        }
        let (client, clock) = (senders[0].client.clone(), o.env.clock);
        let (me, to) = (o.senders[0].clone(), format!("u:{}", o.senders[1]));
        let stop = Arc::new(AtomicBool::new(false));
        let (outbox, stopped) = (o.outboxes[0].clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !stopped.load(Ordering::Acquire) {
                let cid = format!("probe-{n}");
                let due = clock.now_ns();
                outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expect(cid.clone(), due, PROBE_TAG);
                let text = "probe".to_string();
                if chat::send_text(&client, &me, to.clone(), cid, text)
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                clock.sleep_until(due + PROBE_EVERY_NS).await;
            }
        });
        Some(Probe { task, stop })
    }

    /// Stops the probe and waits (up to 2 s) for its last ack.
    async fn stop(self, outbox: &Mutex<Outbox>) {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        wait_for(secs(2.0), || {
            outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unacked()
                == 0
        })
        .await;
    }
}

fn on_message(
    me: &str,
    payload: &[u8],
    now: u64,
    every: u64,
    backlog: &Mutex<Backlog>,
    stats: &ChatStats,
    done: &Counter,
) {
    let Some(d) = stats.foreign_delivery(me, payload) else {
        return;
    };
    let mut b = backlog.lock().unwrap_or_else(PoisonError::into_inner);
    if !stats.first_sight(&mut b.seen, &d) {
        return;
    }
    b.received += 1;
    let b = &mut *b;
    let conv = b.convs.entry(d.conv.clone()).or_default();
    if d.seq < conv.0 {
        b.reordered += 1;
    }
    conv.0 = conv.0.max(d.seq);
    conv.1 += 1;
    // Before the connection is handed over there is no client yet: `flush` catches up.
    if conv.1 >= every {
        if let Some(c) = &b.client {
            chat::spawn_receipt(c, me, &d.conv, conv.0);
            conv.1 = 0;
        }
    }
    if b.received == b.expected && b.done_ns.is_none() {
        b.done_ns = Some(now);
        done.inc();
        b.flush(me);
    }
}
