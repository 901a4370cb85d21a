//! The end of `offline`: what the backlogs and outboxes say, as a report.

use super::*;

/// The run's outcome, from the backlogs and the senders' outboxes.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) lost: u64,
    pub(super) unconfirmed: u64,
    pub(super) unacked: u64,
    pub(super) reordered: u64,
    pub(super) drained_users: u64,
    /// When the last backlog was done.
    pub(super) last_done: u64,
    pub(super) per_user: Latency,
    pub(super) probe_rtt: Latency,
}

impl Offline<'_> {
    pub(super) fn tally(&self, backlogs: &[Arc<Mutex<Backlog>>]) -> Tally {
        let mut t = Tally::default();
        let mut delivered_ids = HashSet::new();
        for b in backlogs {
            let b = b.lock().unwrap_or_else(PoisonError::into_inner);
            delivered_ids.extend(b.seen.iter().copied());
            t.reordered += b.reordered;
            if let Some(d) = b.done_ns {
                t.drained_users += 1;
                t.last_done = t.last_done.max(d);
                t.per_user.record_ns(d.saturating_sub(b.connect_ns));
            }
        }
        for (o, m) in self.outboxes.iter().zip(&self.marks) {
            let o = o.lock().unwrap_or_else(PoisonError::into_inner);
            let m = m.lock().unwrap_or_else(PoisonError::into_inner);
            t.unacked += o.unacked();
            for a in &o.acked {
                if a.tag == PROBE_TAG {
                    t.probe_rtt.record_ns(a.acked_ns.saturating_sub(a.due_ns));
                    continue;
                }
                if !delivered_ids.contains(&a.key) {
                    t.lost += 1;
                }
                if m.delivered.get(&a.conv).is_none_or(|&d| d < a.seq) {
                    t.unconfirmed += 1;
                }
            }
        }
        t
    }

    pub(super) fn report(
        &self,
        pile: &Pile,
        expect: &Expect,
        storm: &StormTimes,
        t: &Tally,
        resumed: u64,
        dropped: usize,
    ) -> Report {
        let (args, stats) = (self.args, &self.stats);
        let mut r = Report::new("offline", title(args), json!(args));
        let pile_span = pile.end_ns.saturating_sub(pile.start_ns);
        let storm_connect = storm.connected_ns.saturating_sub(storm.start_ns);
        let storm_drain = t.last_done.saturating_sub(storm.start_ns);
        r.count("offline users", args.users as u64);
        r.count("pending per user", args.pending);
        r.count("messages to send", args.users as u64 * args.pending);
        r.count("sent", stats.sent.get());
        r.count("acked", expect.acked);
        r.count("ack errors", stats.ack_errors.get());
        r.count("unacked", t.unacked);
        r.value("pile-up time", pile_span as f64 / 1e9, "s");
        r.rate(
            "pile-up acked rate",
            per_s(expect.acked, pile_span),
            "msg/s",
        );
        r.value("storm connect time", storm_connect as f64 / 1e9, "s");
        let conn_rate = per_s(args.users as u64, storm_connect);
        r.rate("storm connections/s", conn_rate, "conn/s");
        if args.persistent {
            r.count("sessions resumed (CONNACK session present)", resumed);
        }
        r.count("users fully drained", t.drained_users);
        r.value(
            "time to drain (storm → last backlog)",
            storm_drain as f64 / 1e9,
            "s",
        );
        r.count("delivered", stats.delivered.get());
        let delivery_rate = per_s(stats.delivered.get(), storm_drain);
        r.rate("storm delivery rate", delivery_rate, "msg/s");
        r.count("lost (acked, not delivered)", t.lost);
        r.count("duplicates", stats.duplicates.get());
        r.count("out of order", t.reordered);
        r.count("conversations", expect.convs);
        r.count("conversations confirmed by receipt", self.covered.get());
        r.count("messages without delivered receipt", t.unconfirmed);
        let receipts_done = storm.end_ns.saturating_sub(storm.start_ns) as f64 / 1e9;
        r.value("time to receipts complete", receipts_done, "s");
        r.count("receipts received by senders", stats.receipts_in.get());
        r.count("dropped connections", dropped as u64);
        r.tally("ack errors by code", stats.errors());
        r.latency("send → sent ack", stats.ack_latency.total().summary());
        let connect = if args.persistent {
            "storm connect (session resumed)"
        } else {
            "storm connect+subscribe"
        };
        r.latency(connect, storm.setup.summary());
        r.latency("reconnect → backlog done", t.per_user.summary());
        if args.senders >= 2 {
            let probe = t.probe_rtt.summary();
            r.latency("probe send → sent ack during the storm", probe);
        }
        let check_receipts = !args.no_receipt_check;
        r.loss = t.lost + if check_receipts { t.unconfirmed } else { 0 };
        r.duplicates = stats.duplicates.get();
        r.unacked = t.unacked + stats.ack_errors.get();
        r
    }

    pub(super) fn notes(
        &self,
        r: &mut Report,
        pile: &Pile,
        storm: &StormTimes,
        t: &Tally,
        resumed: u64,
    ) {
        let args = self.args;
        if args.senders < 2 {
            r.notes
                .push("no probe: it needs --senders 2 or more".into());
        }
        if args.persistent && resumed < args.users as u64 {
            r.notes.push(format!(
                "{} of {} recipients found no session to resume",
                args.users as u64 - resumed,
                args.users
            ));
        }
        if !args.no_receipt_check {
            r.notes.push(
                "loss counts messages never delivered plus messages no forwarded delivered receipt confirmed (--no-receipt-check to leave receipts out)".into(),
            );
        }
        if !pile.all_answered {
            r.notes.push(format!(
                "pile-up: {} sends had no ack after {} s",
                t.unacked, args.send_timeout
            ));
        }
        if !storm.drained {
            r.notes
                .push(format!("storm: drain timed out after {} s", args.drain));
        }
    }
}

fn title(args: &OfflineArgs) -> String {
    format!(
        "offline, {} users × {} pending from {} senders, {}storm at {}",
        args.users,
        args.pending,
        args.senders,
        if args.persistent {
            "persistent sessions, "
        } else {
            ""
        },
        if args.storm_rate > 0.0 {
            format!("{} conn/s", args.storm_rate)
        } else {
            "max rate".into()
        }
    )
}
