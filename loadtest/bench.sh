#!/usr/bin/env bash
# Reruns the whole benchmark report (BENCHMARKS.md) on this machine.
#
#   loadtest/bench.sh [--out DIR] [--only raw,dm,group,connect,offline,history] [--quick] [--no-report]
#
# What it does:
#   1. builds the release binaries (chatmq, chatmq-loadtest, chatmq-bench-report);
#   2. installs Mosquitto with apt when it is missing;
#   3. raises the open-file limit (ulimit -n 200000, else the hard limit, which is reported);
#   4. for each section starts what it needs — Mosquitto with a generated config, and a
#      fresh chatmq (`chatmq serve --config <generated>`: HS256 secret, raised rate limits
#      and max_connections, an [[acl]] rule opening the raw scenario's `chatmq-lt/#`,
#      SQLite in a temp dir) — runs the scenarios one at a time (each run ≤ ~60 s), writes
#      every run's JSON to DIR/json, and stops what it started (trap, also on error/Ctrl-C);
#   5. runs `chatmq-bench-report report DIR` which writes DIR/tables.md (the tables of
#      BENCHMARKS.md) and the PNG plots (into docs/bench/, or DIR when --out is given).
#
# --quick shrinks every size (a minute or two, for checking the script, not for the report).
# Environment: BENCH_MOSQ_PORT (18830), BENCH_MQTT_PORT (18831), BENCH_HTTP_PORT (18832).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$ROOT/docs/bench/results"
PLOTS="$ROOT/docs/bench"
ONLY="raw,dm,group,connect,offline,history"
QUICK=0 REPORT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; PLOTS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-report) REPORT=0; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }
MOSQ_PORT="${BENCH_MOSQ_PORT:-18830}"
MQTT_PORT="${BENCH_MQTT_PORT:-18831}"
HTTP_PORT="${BENCH_HTTP_PORT:-18832}"
SECRET="bench-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
export CHATMQ_LOADTEST_SECRET="$SECRET"
log() { echo "== bench: $*" >&2; }

# ---------------------------------------------------------------------------------------------
log "building release binaries"
cargo build -q --release -p chatmq -p chatmq-loadtest
CHATMQ="$TARGET/release/chatmq"
LT="$TARGET/release/chatmq-loadtest"
REPORTER="$TARGET/release/chatmq-bench-report"
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  log "installing mosquitto"
  apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
# Debian ships mosquitto with a service that may be running on 1883; we use our own port.

# Open files: both processes inherit this shell's limit.
if ! ulimit -n 200000 2>/dev/null; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
FD_LIMIT="$(ulimit -n)"
log "open-file limit: $FD_LIMIT"

mkdir -p "$OUT/json"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/chatmq-bench.XXXXXX")"
MOSQ_PID="" CHATMQ_PID=""
stop_pid() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
# Broker logs are kept (warnings only; the last 300 lines) beside the JSON: drops show there
# (Mosquitto: "Outgoing messages are being dropped"; rumqttd: "Read cursor start jumped").
SECTION="setup"
keep_log() { # file name
  [ -f "$1" ] || return 0
  mkdir -p "$OUT/logs"
  sed 's/\x1b\[[0-9;]*m//g' "$1" | tail -n 300 >"$OUT/logs/$SECTION-$2.log" || true
}
stop_mosquitto() { stop_pid "$MOSQ_PID"; MOSQ_PID=""; keep_log "$WORK/mosquitto.log" mosquitto; }
stop_chatmq() { stop_pid "$CHATMQ_PID"; CHATMQ_PID=""; keep_log "$WORK/chatmq.log" chatmq; }
cleanup() {
  local rc=$?
  stop_mosquitto
  stop_chatmq
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # host port
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1:$2" >&2
  return 1
}

start_mosquitto() {
  cat >"$WORK/mosquitto.conf" <<EOF
# Debian's mosquitto 2.0, defaults except: own port, anonymous access, no persistence.
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
EOF
  "$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
  MOSQ_PID=$!
  wait_port 127.0.0.1 "$MOSQ_PORT"
}

# start_chatmq [listen-host]: a fresh broker with an empty store.
start_chatmq() {
  local host="${1:-127.0.0.1}"
  rm -rf "$WORK/data" && mkdir -p "$WORK/data"
  cat >"$WORK/chatmq.toml" <<EOF
[mqtt]
listen = "$host:$MQTT_PORT"
max_connections = 200000
# The raw scenario logs every client in as one user.
max_sessions_per_user = 200000

[http]
listen = "127.0.0.1:$HTTP_PORT"

[auth]
algorithm = "HS256"
secret = "$SECRET"

[store]
backend = "sqlite"
path = "$WORK/data/chatmq.db"

[chat]
rate_per_sec = 1000000.0
rate_burst = 1000000.0
group_max_members = 50000

[engine]
max_connections = 200000

[log]
level = "warn"
format = "text"

# The raw scenario: every client logs in as user "ltraw" on the general plane.
[[acl]]
topic = "chatmq-lt/#"
access = "readwrite"
EOF
  "$CHATMQ" serve --config "$WORK/chatmq.toml" >"$WORK/chatmq.log" 2>&1 &
  CHATMQ_PID=$!
  wait_port 127.0.0.1 "$MQTT_PORT"
}

# lt NAME scenario args…: one run, JSON to $OUT/json/NAME.json, table to NAME.txt.
# A run that fails its own checks is kept (its JSON says so); only a run that could not be
# done (exit 2) stops the script.
lt() {
  local name="$1"; shift
  log "$name: chatmq-loadtest $*"
  local rc=0
  "$LT" "$@" --quiet --seed 42 --json "$OUT/json/$name.json" >"$OUT/json/$name.txt" 2>"$WORK/lt.err" || rc=$?
  if [ "$rc" = 2 ]; then
    cat "$WORK/lt.err" >&2
    return 2
  fi
  grep -E "rate|loss|p50|lost|time" "$OUT/json/$name.txt" | head -n 6 | sed 's/^/     /' >&2 || true
}
sustained() { "$REPORTER" sustained "$OUT/json/$1.json"; }

# Sizes.
if [ "$QUICK" = 1 ]; then
  RAW_D=3 DM_D=4 DM_USERS=20 GROUP_M=2000 GROUP_O=200 CONN_A=1000 CONN_B=2000 OFF_U=200 OFF_P=20
  HIST_M=20000 HIST_CHUNK=20000 HIST_K=200
else
  RAW_D=10 DM_D=10 DM_USERS=200 GROUP_M=50000 GROUP_O=5000 CONN_A=10000 CONN_B=50000 OFF_U=10000 OFF_P=100
  HIST_M=1000000 HIST_CHUNK=250000 HIST_K=2000
fi
# Fixed (zero-loss) rates of the raw table, total publishes/s: the same for both brokers.
RAW_P2P_RATE="${RAW_P2P_RATE:-10000}" RAW_FANIN_RATE="${RAW_FANIN_RATE:-10000}" RAW_FANOUT_RATE="${RAW_FANOUT_RATE:-1000}"
RAW_N=10

# ---------------------------------------------------------------------------------------------
if want raw; then
  SECTION=raw
  start_mosquitto
  start_chatmq
  for broker in mosquitto chatmq; do
    if [ "$broker" = mosquitto ]; then port=$MOSQ_PORT pid=$MOSQ_PID login=()
    else port=$MQTT_PORT pid=$CHATMQ_PID login=(--username ltraw); fi
    for mode in p2p fan-in fan-out; do
      case $mode in p2p) rate=$RAW_P2P_RATE ;; fan-in) rate=$RAW_FANIN_RATE ;; fan-out) rate=$RAW_FANOUT_RATE ;; esac
      for qos in 0 1; do
        common=(raw --mode "$mode" -n "$RAW_N" --qos "$qos" --size 64 --duration "$RAW_D" --drain 10
                --port "$port" --broker-pid "$pid" "${login[@]}")
        lt "raw-$broker-$mode-q$qos-fixed" "${common[@]}" --rate "$rate"
        lt "raw-$broker-$mode-q$qos-max" "${common[@]}" --rate 0
      done
    done
    # Latency vs offered load, p2p QoS 1 (the plot).
    for rate in 2000 5000 10000 20000 30000 40000; do
      lt "sweep-raw-$broker-p2p-q1-$rate" raw --mode p2p -n "$RAW_N" --qos 1 --size 64 \
        --duration 6 --drain 10 --rate "$rate" --port "$port" --broker-pid "$pid" "${login[@]}"
    done
  done
  stop_mosquitto
  stop_chatmq
fi

# ---------------------------------------------------------------------------------------------
if want dm; then
  SECTION=dm
  start_chatmq
  # Max sustained persisted throughput: raise the offered rate until a run no longer keeps up
  # (achieved < 95 % of offered, any loss, or p99 send → delivered over 1 s).
  best=0
  for rate in 1000 2000 3000 4000 5000 6000 7000 8000 10000 12000 15000 18000 22000 26000 30000; do
    lt "sweep-dm-$rate" dm -u "$DM_USERS" --rate "$rate" --duration "$DM_D" --drain 15 \
      --port "$MQTT_PORT" --broker-pid "$CHATMQ_PID"
    if sustained "sweep-dm-$rate"; then best=$rate; else break; fi
  done
  echo "$best" >"$OUT/json/dm-max-sustained.txt"
  log "dm: max sustained offered rate $best msg/s"
  if [ "$best" -gt 0 ]; then
    for pct in 25 50 75; do
      rate=$((best * pct / 100))
      lt "dm-at-$pct" dm -u "$DM_USERS" --rate "$rate" --duration $((DM_D * 2)) --drain 15 \
        --port "$MQTT_PORT" --broker-pid "$CHATMQ_PID"
    done
  fi
  stop_chatmq
fi

# ---------------------------------------------------------------------------------------------
if want group; then
  SECTION=group
  start_chatmq
  lt group group -g 1 -m "$GROUP_M" -o "$GROUP_O" -s 1 --count 5 --rate 0.5 --duration 12 \
    --add-batch 500 --drain 30 --port "$MQTT_PORT" --broker-pid "$CHATMQ_PID"
  stop_chatmq
fi

# ---------------------------------------------------------------------------------------------
if want connect; then
  SECTION=connect
  # Beyond ~28k connections from one address the tool needs several loopback addresses, and
  # both processes need the file descriptors: the largest count is capped by the fd limit.
  hosts="127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4"
  for c in "$CONN_A" "$CONN_B"; do
    n=$c
    cap=$((FD_LIMIT - 500))
    if [ "$n" -gt "$cap" ]; then
      n=$(( cap / 1000 * 1000 ))
      log "connect: $c connections need more than the $FD_LIMIT open files allowed; trying $n"
      echo "$c $n $FD_LIMIT" >"$OUT/json/connect-capped.txt"
    fi
    start_chatmq 0.0.0.0
    lt "connect-$n" connect -c "$n" --rate 0 --hold 10 --subscribe --host "$hosts" \
      --connect-concurrency 256 --port "$MQTT_PORT" --broker-pid "$CHATMQ_PID"
    stop_chatmq
  done
fi

# ---------------------------------------------------------------------------------------------
if want offline; then
  SECTION=offline
  start_chatmq
  # 1,000,000 messages pile up at the persisted rate: this run is longer than the others.
  lt offline offline -u "$OFF_U" -P "$OFF_P" --senders 50 --receipt-every 50 \
    --send-timeout 240 --drain 180 --port "$MQTT_PORT" --broker-pid "$CHATMQ_PID"
  stop_chatmq
fi

# ---------------------------------------------------------------------------------------------
if want history; then
  SECTION=history
  start_chatmq
  tag="bench$$"
  filled=0 i=0
  # The fill in chunks, so that no single run is long; they add up in the same conversations.
  while [ "$filled" -lt "$HIST_M" ]; do
    lt "history-fill-$i" history --tag "$tag" --messages "$HIST_CHUNK" --convs 100 --senders 10 \
      --queries 0 --fill-timeout 90 --port "$MQTT_PORT" --broker-pid "$CHATMQ_PID"
    filled=$((filled + HIST_CHUNK)) i=$((i + 1))
  done
  lt history history --tag "$tag" --skip-fill --convs 100 --senders 10 --queries "$HIST_K" \
    --duration 60 --port "$MQTT_PORT" --broker-pid "$CHATMQ_PID"
  du -sb "$WORK/data" | cut -f1 >"$OUT/json/history-store-bytes.txt"
  stop_chatmq
fi

# ---------------------------------------------------------------------------------------------
{
  echo "nproc: $(nproc)"
  echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel: $(uname -sr)"
  echo "rustc: $(rustc --version)"
  echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -n1)"
  echo "fd limit: $FD_LIMIT"
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$OUT/json/machine.txt"

if [ "$REPORT" = 1 ]; then
  log "report"
  "$REPORTER" report "$OUT" --plots "$PLOTS"
  log "tables in $OUT/tables.md, plots in $PLOTS"
fi
