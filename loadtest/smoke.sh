#!/usr/bin/env bash
# Short runs of every scenario with --assert-zero-loss: a CI smoke test, not a benchmark
# (no timing is asserted). Needs a running broker.
#
#   loadtest/smoke.sh [--port 1883] [--secret SECRET] [--raw-only] [--history] [--bin PATH]
#
# --history adds a small `history` run (fill + pages); it stores 2,000 messages.
#
# chatmq: `loadtest/smoke.sh --port 1883 --secret "$JWT_SECRET"`
# any other MQTT broker: `loadtest/smoke.sh --port 1883 --raw-only`
set -euo pipefail

PORT=1883 SECRET="" RAW_ONLY=0 HISTORY=0 BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --secret) SECRET="$2"; shift 2 ;;
    --raw-only) RAW_ONLY=1; shift ;;
    --history) HISTORY=1; shift ;;
    --bin) BIN="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then
  cargo build -q -p chatmq-loadtest
  BIN="${CARGO_TARGET_DIR:-target}/debug/chatmq-loadtest"
fi

run() {
  echo "+ chatmq-loadtest $*" >&2
  "$BIN" "$@" --port "$PORT" --quiet --assert-zero-loss
}

# On chatmq the raw clients log in as one user with a minted token; the broker must open
# the topics to it, e.g. [[acl]] topic = "chatmq-lt/#", access = "readwrite".
# The secret goes through the environment (CHATMQ_LOADTEST_SECRET), not the command line.
RAW_LOGIN=()
if [ -n "$SECRET" ]; then export CHATMQ_LOADTEST_SECRET="$SECRET"; RAW_LOGIN=(--username ltsmoke); fi
for mode in p2p fan-in fan-out; do
  run raw --mode "$mode" -n 3 --qos 1 --rate 300 --duration 2 "${RAW_LOGIN[@]}"
done

if [ "$RAW_ONLY" = 1 ]; then exit 0; fi
if [ -z "$SECRET" ]; then echo "chat scenarios need --secret" >&2; exit 2; fi
run dm --users 10 --rate 50 --duration 2 --receipt-every 5
run group --groups 2 --members 12 --online 6 --senders 2 --add-batch 4 --rate 20 --duration 2
run offline --users 10 --pending 5 --senders 3 --receipt-every 2 --drain 30
run offline --users 10 --pending 5 --senders 3 --receipt-every 2 --drain 30 --persistent
run connect --connections 50 --rate 100 --hold 1 --subscribe
if [ "$HISTORY" = 1 ]; then
  run history --messages 2000 --convs 10 --senders 3 --queries 200 --fill-timeout 60 --duration 30
fi
