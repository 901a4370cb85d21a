//! A stand-in for chatmq's chat service on top of any plain MQTT broker, to exercise the
//! chat scenarios before the real broker exists: it subscribes to `chat/u/+/out/#` and
//! answers like the server would (acks, deliveries, groups via rpc, forwarded receipts).
//! No auth, no persistence. Offline delivery is imitated: DMs are kept per recipient until a
//! `delivered` receipt covers them and replayed when the broker logs the recipient's
//! subscription to its inbox, which needs Mosquitto started with
//! `log_dest topic` and `log_type subscribe` (see `loadtest/README.md`).
//!
//! `cargo run -p chatmq-loadtest --example fake_chat -- 18883`

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Chat {
    next_id: u64,
    seqs: HashMap<String, u64>,
    groups: HashMap<String, Vec<String>>,
    /// Per recipient: DMs not yet covered by its `delivered` receipt, as (conv, seq, message).
    undelivered: HashMap<String, Vec<(String, u64, Value)>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(1883);
    let mut opts = MqttOptions::new("fake-chat", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1000);
    let (client, mut el) = AsyncClient::new(opts, 100_000);
    client.subscribe("chat/u/+/out/#", QoS::AtLeastOnce).await?;
    client
        .subscribe("$SYS/broker/log/#", QoS::AtMostOnce)
        .await?;
    let mut chat = Chat::default();
    loop {
        let ev = el.poll().await?;
        let Event::Incoming(Packet::Publish(p)) = ev else {
            continue;
        };
        if p.topic.starts_with("$SYS/") {
            // e.g. "1795395459: ltab-lt 1 chat/u/ltabr0/in/#"
            let text = String::from_utf8_lossy(&p.payload);
            let user = text
                .split(' ')
                .find_map(|w| w.strip_prefix("chat/u/")?.strip_suffix("/in/#"));
            if let Some(user) = user {
                let backlog = chat.replay(user);
                if !backlog.is_empty() {
                    let client = client.clone();
                    tokio::spawn(async move {
                        // The log line is written while the subscription is being added.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        for (topic, v) in backlog {
                            if let Ok(p) = rmp_serde::to_vec_named(&v) {
                                let _ = client.publish(topic, QoS::AtLeastOnce, false, p).await;
                            }
                        }
                    });
                }
            }
            continue;
        }
        let parts: Vec<&str> = p.topic.split('/').collect();
        let (Some(me), Some(kind)) = (parts.get(2), parts.get(4)) else {
            continue;
        };
        let Ok(req) = rmp_serde::from_slice::<Value>(&p.payload) else {
            continue;
        };
        for (topic, v) in chat.handle(me, kind, &req) {
            let payload = rmp_serde::to_vec_named(&v)?;
            client.try_publish(topic, QoS::AtLeastOnce, false, payload)?;
        }
    }
}

impl Chat {
    fn replay(&self, user: &str) -> Vec<(String, Value)> {
        self.undelivered
            .get(user)
            .map(|v| {
                v.iter()
                    .map(|(_, _, m)| (format!("chat/u/{user}/in/msg"), m.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn handle(&mut self, me: &str, kind: &str, req: &Value) -> Vec<(String, Value)> {
        let s = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match kind {
            "send" => {
                let (cid, to) = (s("cid"), s("to"));
                let (conv, targets) = if let Some(peer) = to.strip_prefix("u:") {
                    let (a, b) = if me < peer { (me, peer) } else { (peer, me) };
                    (
                        format!("d:{a}:{b}"),
                        vec![
                            format!("chat/u/{peer}/in/msg"),
                            format!("chat/u/{me}/in/msg"),
                        ],
                    )
                } else if let Some(gid) = to.strip_prefix("g:") {
                    (format!("g:{gid}"), vec![format!("chat/g/{gid}/msg")])
                } else {
                    let err =
                        json!({"cid": cid, "error": {"code": "bad_request", "message": "to"}});
                    return vec![(format!("chat/u/{me}/in/ack"), err)];
                };
                self.next_id += 1;
                let seq = self.seqs.entry(conv.clone()).or_default();
                *seq += 1;
                let (id, seq, ts) = (self.next_id, *seq, now_ms());
                if let Some(peer) = to.strip_prefix("u:") {
                    self.undelivered.entry(peer.to_string()).or_default().push((
                        conv.clone(),
                        seq,
                        json!({"id": id, "conv": conv, "seq": seq, "from": me, "ts": ts,
                            "cid": cid, "body": req.get("body").cloned().unwrap_or(Value::Null)}),
                    ));
                }
                let mut out = vec![(
                    format!("chat/u/{me}/in/ack"),
                    json!({"cid": cid, "id": id, "conv": conv, "seq": seq, "ts": ts}),
                )];
                let msg = json!({"id": id, "conv": conv, "seq": seq, "from": me, "ts": ts,
                    "cid": cid, "body": req.get("body").cloned().unwrap_or(Value::Null)});
                out.extend(targets.into_iter().map(|t| (t, msg.clone())));
                out
            }
            "receipt" => {
                let conv = s("conv");
                let up_to = req.get("up_to").and_then(Value::as_u64).unwrap_or(0);
                if let Some(list) = self.undelivered.get_mut(me) {
                    list.retain(|(c, seq, _)| *c != conv || *seq > up_to);
                }
                let peer = conv
                    .strip_prefix("d:")
                    .and_then(|c| c.split_once(':'))
                    .map(|(a, b)| if a == me { b } else { a }.to_string());
                let fwd = json!({"conv": conv, "by": me, "kind": s("kind"),
                    "up_to": req.get("up_to").cloned().unwrap_or(json!(0)), "ts": now_ms()});
                match peer {
                    Some(p) => vec![(format!("chat/u/{p}/in/receipt"), fwd)],
                    None => vec![],
                }
            }
            "rpc" => {
                let rid = req.get("rid").cloned().unwrap_or(Value::Null);
                let users = |k: &str| -> Vec<String> {
                    req.get(k)
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|u| u.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let result = match s("op").as_str() {
                    "group.create" => {
                        let gid = format!("fg{}", self.groups.len() + 1);
                        let mut members = vec![me.to_string()];
                        members.extend(users("members"));
                        self.groups.insert(gid.clone(), members);
                        json!({"rid": rid, "ok": true, "result": {"gid": gid}})
                    }
                    "group.add" => {
                        let add = users("users");
                        match self.groups.get_mut(&s("gid")) {
                            Some(g) => {
                                g.extend(add);
                                json!({"rid": rid, "ok": true, "result": {}})
                            }
                            None => {
                                json!({"rid": rid, "ok": false, "error": {"code": "not_found", "message": "gid"}})
                            }
                        }
                    }
                    _ => {
                        json!({"rid": rid, "ok": false, "error": {"code": "bad_request", "message": "op"}})
                    }
                };
                vec![(format!("chat/u/{me}/in/rpc"), result)]
            }
            _ => vec![],
        }
    }
}
