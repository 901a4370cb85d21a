#!/usr/bin/env bash
# CI smoke test of chatmq under load: builds the debug binaries, starts a broker on free
# ports with a throw-away config and store, runs loadtest/smoke.sh (every scenario small,
# --assert-zero-loss, no timing asserted) and always stops the broker.
#
#   loadtest/ci-smoke.sh            # from the repo root or anywhere inside it
#
# Ports: the broker binds port 0 for MQTT and HTTP and the script reads the bound
# addresses from its `chatmq ready` log line (no race with another process picking a
# "free" port), then waits for /readyz. Exit status: non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
started=$SECONDS

echo "== ci-smoke: building debug binaries" >&2
cargo build -q -p chatmq -p chatmq-loadtest
CHATMQ="$TARGET/debug/chatmq"
LOADTEST="$TARGET/debug/chatmq-loadtest"
build_done=$SECONDS

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chatmq-ci-smoke.XXXXXX")"
BROKER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$WORK/broker.log" ]; then
    echo "== ci-smoke failed (exit $rc); last broker log lines:" >&2
    tail -n 40 "$WORK/broker.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SECRET="ci-smoke-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$WORK/broker.toml" <<EOF
[mqtt]
listen = "127.0.0.1:0"
max_connections = 10000
# The raw scenario logs every client in as one user.
max_sessions_per_user = 10000

[http]
listen = "127.0.0.1:0"

[auth]
algorithm = "HS256"
secret = "$SECRET"

[store]
backend = "sqlite"
path = "$WORK/chatmq.db"

[chat]
rate_per_sec = 10000.0
rate_burst = 10000.0

[log]
level = "info"
format = "text"

# The raw scenario's clients all log in as "ltsmoke" (smoke.sh).
[[acl]]
topic = "chatmq-lt/#"
access = "readwrite"
EOF

echo "== ci-smoke: starting chatmq" >&2
NO_COLOR=1 RUST_LOG_STYLE=never "$CHATMQ" serve --config "$WORK/broker.toml" >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!

# The ready line carries the bound addresses, e.g. `mqtt=Some(127.0.0.1:40123) ... http=Some(127.0.0.1:40124)`.
MQTT_PORT="" HTTP_PORT=""
for _ in $(seq 1 300); do
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "chatmq exited during startup" >&2
    exit 1
  fi
  line="$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/broker.log" | grep -m1 'chatmq ready' || true)"
  if [ -n "$line" ]; then
    MQTT_PORT="$(sed -n 's/.*mqtt=Some(127\.0\.0\.1:\([0-9]*\)).*/\1/p' <<<"$line")"
    HTTP_PORT="$(sed -n 's/.*http=Some(127\.0\.0\.1:\([0-9]*\)).*/\1/p' <<<"$line")"
    break
  fi
  sleep 0.1
done
if [ -z "$MQTT_PORT" ] || [ -z "$HTTP_PORT" ]; then
  echo "no usable 'chatmq ready' line within 30 s:" >&2
  exit 1
fi
# /readyz, with bash's /dev/tcp (no curl needed), in a subshell so no redirection sticks.
ready=0
for _ in $(seq 1 100); do
  status="$( (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT" &&
    printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && head -n1 <&3) 2>/dev/null || true)"
  case "$status" in *" 200"*) ready=1; break ;; esac
  sleep 0.1
done
[ "$ready" = 1 ] || { echo "/readyz never answered 200" >&2; exit 1; }
echo "== ci-smoke: chatmq ready (pid $BROKER_PID, mqtt $MQTT_PORT, http $HTTP_PORT)" >&2

"$ROOT/loadtest/smoke.sh" --port "$MQTT_PORT" --secret "$SECRET" --bin "$LOADTEST" --history

echo "== ci-smoke: passed in $((SECONDS - build_done)) s after a $((build_done - started)) s build" >&2
