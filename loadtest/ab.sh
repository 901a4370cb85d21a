#!/usr/bin/env bash
# A/B: the same raw and dm runs against two chatmq binaries, alternated round by round, each
# run on a fresh broker and an empty SQLite store with the same config (chat rate limits
# raised, `chatmq-lt/#` open). Used for the before/after tables in BENCHMARKS.md §7.
#
#   loadtest/ab.sh BEFORE_BIN AFTER_BIN [ROUNDS] [OUT_DIR]
#
# Needs a release chatmq-loadtest (target/release, or $LT). Prints, per run, the latency line
# of raw (end-to-end) and dm (send → sent ack); the JSON of every run stays in OUT_DIR.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/broker-lib.sh"
[ $# -ge 2 ] || { echo "usage: $0 BEFORE_BIN AFTER_BIN [ROUNDS] [OUT_DIR]" >&2; exit 2; }
before="$1" after="$2" rounds="${3:-5}" out="${4:-$(mktemp -d)}"
LT="${LT:-$here/../target/release/chatmq-loadtest}"
mkdir -p "$out"
trap 'broker_stop' EXIT

one() {
  local tag="$1" bin="$2" round="$3"
  local secret
  secret="ab-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  rm -rf "$out/data" && mkdir -p "$out/data"
  cat >"$out/broker.toml" <<CONF
[mqtt]
listen = "127.0.0.1:0"
max_sessions_per_user = 10000
[http]
listen = "127.0.0.1:0"
[auth]
secret = "$secret"
[store]
backend = "sqlite"
path = "$out/data/chatmq.db"
[chat]
rate_per_sec = 10000.0
rate_burst = 10000.0
[log]
level = "info"
[[acl]]
topic = "chatmq-lt/#"
access = "readwrite"
CONF
  broker_start "$bin" "$out/broker.toml" "$out/broker-$tag-$round.log" || return 1
  export CHATMQ_LOADTEST_SECRET="$secret"
  "$LT" raw --mode p2p -n 10 --qos 1 --size 64 --duration 10 --drain 10 --rate 10000 \
    --username ltraw --port "$MQTT_PORT" --quiet --json "$out/raw-$tag-$round.json" \
    >"$out/raw-$tag-$round.txt" 2>&1
  "$LT" dm -u 200 --rate 4000 --duration 10 --drain 15 --port "$MQTT_PORT" \
    --broker-pid "$BROKER_PID" --quiet --json "$out/dm-$tag-$round.json" \
    >"$out/dm-$tag-$round.txt" 2>&1
  broker_stop
  printf '%-6s %s raw %s\n' "$tag" "$round" "$(grep -m1 '  end-to-end' "$out/raw-$tag-$round.txt")"
  printf '%-6s %s dm  %s\n' "$tag" "$round" "$(grep -m1 'send → sent ack' "$out/dm-$tag-$round.txt")"
}

echo "latency (ms):          count  p50  p90  p99  p99.9  max   — results in $out"
for round in $(seq 1 "$rounds"); do
  one before "$before" "$round"
  one after "$after" "$round"
done
