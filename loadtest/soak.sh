#!/usr/bin/env bash
# Soak: mixed load (DMs with receipts, a group, general-plane QoS 1 p2p) on one release
# broker for N minutes, broker RSS sampled every 10 s, and the RSS slope after warm-up.
#
#   loadtest/soak.sh [--minutes 30] [--out DIR]
#
# Prints one line per sample and a closing summary (first/last/peak RSS, slope in MB/hour
# by least squares over the samples after the first 2 minutes, each load's loss). Exit
# status is non-zero when a load reports loss or the broker dies.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MINUTES=30
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--out DIR]" >&2; exit 2 ;;
  esac
done
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build -q --release -p chatmq -p chatmq-loadtest
CHATMQ="$TARGET/release/chatmq"
LOADTEST="$TARGET/release/chatmq-loadtest"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/chatmq-soak.XXXXXX")"
OUT="${OUT:-$WORK/out}"
mkdir -p "$OUT"
# shellcheck source=broker-lib.sh
. "$ROOT/loadtest/broker-lib.sh"
LOADS=()
cleanup() {
  local rc=$?
  for pid in "${LOADS[@]}"; do kill "$pid" 2>/dev/null || true; done
  broker_stop
  rm -rf "$WORK/data"
  exit "$rc"
}
trap cleanup EXIT

SECRET="soak-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$WORK/broker.toml" <<CONF
[mqtt]
listen = "127.0.0.1:0"
max_sessions_per_user = 10000
[http]
listen = "127.0.0.1:0"
[auth]
secret = "$SECRET"
[store]
backend = "sqlite"
path = "$WORK/data/chatmq.db"
[chat]
rate_per_sec = 10000.0
rate_burst = 10000.0
[log]
level = "info"
# Small engine logs, so the general plane's per-filter logs fill in the first minutes and the
# slope after warm-up shows growth that does not stop (rumqttd keeps up to
# max_segment_size x max_segment_count bytes of messages per filter, by design).
[engine]
max_segment_size = 262144
max_segment_count = 2
[[acl]]
topic = "chatmq-lt/#"
access = "readwrite"
CONF
broker_start "$CHATMQ" "$WORK/broker.toml" "$OUT/broker.log"
echo "== soak: chatmq pid $BROKER_PID, mqtt $MQTT_PORT, $MINUTES min" >&2
export CHATMQ_LOADTEST_SECRET="$SECRET"
SECS=$((MINUTES * 60))
load() {
  local name="$1"; shift
  "$LOADTEST" "$@" --port "$MQTT_PORT" --quiet --assert-zero-loss --json "$OUT/$name.json" \
    >"$OUT/$name.txt" 2>"$OUT/$name.log" &
  LOADS+=($!)
}
load dm dm --users 200 --rate 1000 --duration "$SECS" --receipt-every 10
load group group --groups 5 --members 200 --online 50 --senders 5 --rate 50 --duration "$SECS"
load raw raw --mode p2p -n 20 --qos 1 --rate 1000 --duration "$SECS" --username ltsoak

echo "t_s,rss_kb" >"$OUT/rss.csv"
start=$SECONDS
while [ $((SECONDS - start)) -lt "$SECS" ]; do
  kill -0 "$BROKER_PID" 2>/dev/null || { echo "chatmq died" >&2; exit 1; }
  rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$BROKER_PID/status")"
  echo "$((SECONDS - start)),$rss" | tee -a "$OUT/rss.csv"
  sleep 10
done
failed=0
for i in "${!LOADS[@]}"; do wait "${LOADS[$i]}" || failed=1; done
LOADS=()

# Least-squares RSS slopes: after 2 min, and over the second half of the run (once the engine
# logs and SQLite's caches have filled, growth that remains is growth that does not stop).
awk -F, 'function slope(from,   i, m, sx, sy, sxx, sxy) {
    for (i = 1; i <= n; i++) if (t[i] >= from) { m++; sx += t[i]; sy += r[i]; sxx += t[i] * t[i]; sxy += t[i] * r[i] }
    return (m > 1) ? (m * sxy - sx * sy) / (m * sxx - sx * sx) * 3600 : 0
  }
  NR > 1 { n++; t[n] = $1; r[n] = $2 / 1024; if (r[n] > peak) peak = r[n] }
  END {
    printf "RSS: first %.1f MB, last %.1f MB, peak %.1f MB; slope after 2 min %.2f MB/hour, over the second half %.2f MB/hour (%d samples)\n", r[1], r[n], peak, slope(120), slope(t[n] / 2), n
  }' "$OUT/rss.csv" | tee "$OUT/summary.txt"
for name in dm group raw; do
  printf '%s: ' "$name" | tee -a "$OUT/summary.txt"
  grep -o '"loss": *[0-9]*\|"duplicates": *[0-9]*\|"unacked": *[0-9]*' "$OUT/$name.json" | tr '\n' ' ' | tee -a "$OUT/summary.txt"
  echo | tee -a "$OUT/summary.txt"
done
echo "results in $OUT" >&2
exit "$failed"
