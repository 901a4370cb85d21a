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
# shellcheck source=broker-lib.sh
. "$ROOT/loadtest/broker-lib.sh"
cleanup() {
  local rc=$?
  broker_stop
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
broker_start "$CHATMQ" "$WORK/broker.toml" "$WORK/broker.log"
echo "== ci-smoke: chatmq ready (pid $BROKER_PID, mqtt $MQTT_PORT, http $HTTP_PORT)" >&2

"$ROOT/loadtest/smoke.sh" --port "$MQTT_PORT" --secret "$SECRET" --bin "$LOADTEST" --history

echo "== ci-smoke: passed in $((SECONDS - build_done)) s after a $((build_done - started)) s build" >&2
