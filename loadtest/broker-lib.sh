# Sourced by ci-smoke.sh and soak.sh: start a chatmq broker on the ports its config binds
# (port 0 works: the bound addresses are read from its `chatmq ready` line) and stop it.

BROKER_PID=""
MQTT_PORT=""
HTTP_PORT=""

# broker_start CHATMQ_BIN CONFIG LOG: returns once /readyz answers 200.
broker_start() {
  local bin="$1" config="$2" log="$3"
  NO_COLOR=1 RUST_LOG_STYLE=never "$bin" serve --config "$config" >"$log" 2>&1 &
  BROKER_PID=$!
  # The ready line carries the bound addresses, e.g. `mqtt=Some(127.0.0.1:40123) ... http=Some(127.0.0.1:40124)`.
  local line
  for _ in $(seq 1 300); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "chatmq exited during startup" >&2
      return 1
    fi
    line="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -m1 'chatmq ready' || true)"
    if [ -n "$line" ]; then
      MQTT_PORT="$(sed -n 's/.*mqtt=Some(127\.0\.0\.1:\([0-9]*\)).*/\1/p' <<<"$line")"
      HTTP_PORT="$(sed -n 's/.*http=Some(127\.0\.0\.1:\([0-9]*\)).*/\1/p' <<<"$line")"
      break
    fi
    sleep 0.1
  done
  if [ -z "$MQTT_PORT" ] || [ -z "$HTTP_PORT" ]; then
    echo "no usable 'chatmq ready' line within 30 s:" >&2
    return 1
  fi
  # /readyz, with bash's /dev/tcp (no curl needed), in a subshell so no redirection sticks.
  local status
  for _ in $(seq 1 100); do
    status="$( (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT" &&
      printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && head -n1 <&3) 2>/dev/null || true)"
    case "$status" in *" 200"*) return 0 ;; esac
    sleep 0.1
  done
  echo "/readyz never answered 200" >&2
  return 1
}

# broker_stop: SIGTERM, then SIGKILL after 10 s.
broker_stop() {
  if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
  fi
}
