#!/usr/bin/env bash
# `make bench`: starts a local stack from the release binaries on its own ports, drives it
# with the workspace's load generator (infra/loadgen) and prints the figures. Every run is
# bounded in time and count and targets 127.0.0.1 only. Reports: target/bench/*.json.
#
#   BENCH="rest fanout hold assistant"  scenarios to run (default: all)
#   BENCH_DURATION=10s                  length of each measured phase
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
OUT=target/bench
LOGS=$OUT/logs
SCENARIOS=${BENCH:-rest fanout hold assistant}
DURATION=${BENCH_DURATION:-10s}
REDIS_PORT=6395
GW_A=127.0.0.1:3995
GW_B=127.0.0.1:3996
MOCK=127.0.0.1:8395
mkdir -p "$LOGS"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

# start NAME command... — runs in the background, logs to $LOGS/NAME.log; its pid is $LAST.
# (Not called through $(…): a subshell would lose the pid list that cleanup relies on.)
LAST=
start() {
  local name=$1; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  LAST=$!
  PIDS+=("$LAST")
}

wait_http() {
  for _ in $(seq 1 100); do
    curl -fsS "http://$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: $1 did not become ready; see $LOGS" >&2
  exit 1
}

machine() {
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(. /etc/os-release && echo "$PRETTY_NAME"), $(uname -r)"
  grep -m1 'model name' /proc/cpuinfo | sed 's/^model name\s*: /cpu: /' || true
}

stop_all() {
  cleanup
  PIDS=()
  sleep 0.5
}

export REDIS_URL=redis://127.0.0.1:$REDIS_PORT RUST_LOG=warn
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
fresh_redis() {
  for port in $REDIS_PORT ${GW_A##*:} ${GW_B##*:} ${MOCK##*:}; do
    for _ in $(seq 1 50); do port_free "$port" && break; sleep 0.1; done
    port_free "$port" || { echo "bench: port $port is in use; stop what holds it" >&2; exit 1; }
  done
  start redis redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --maxclients 20000
  REDIS_PID=$LAST
  for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: redis-server did not start" >&2
  exit 1
}

machine | tee "$OUT/machine.txt"
for scenario in $SCENARIOS; do
  echo
  echo "================ $scenario ================"
  fresh_redis
  case $scenario in
    rest)
      GATEWAY_ADDR=$GW_A start gateway "$BIN/gateway"
      GW=$LAST
      start persistence "$BIN/workers" persistence
      WP=$LAST
      wait_http $GW_A
      "$BIN/loadgen" rest --url "http://$GW_A" --clients 64 --duration "$DURATION" \
        --redis-url "$REDIS_URL" --gateway-pid "$GW" --worker-pid "$WP" --redis-pid "$REDIS_PID" --json "$OUT/rest.json"
      ;;
    fanout)
      GATEWAY_ADDR=$GW_A start gateway-a "$BIN/gateway"
      GA=$LAST
      GATEWAY_ADDR=$GW_B start gateway-b "$BIN/gateway"
      GB=$LAST
      start persistence "$BIN/workers" persistence
      WP=$LAST
      wait_http $GW_A; wait_http $GW_B
      "$BIN/loadgen" fanout --url "http://$GW_A" --url "http://$GW_B" --connections 2000 --members 10 --rate 4000 \
        --duration "$DURATION" --gateway-pid "$GA" --gateway-pid "$GB" --worker-pid "$WP" --redis-pid "$REDIS_PID" \
        --redis-url "$REDIS_URL" --json "$OUT/fanout.json"
      ;;
    hold)
      GATEWAY_ADDR=$GW_A WS_MAX_CONNECTIONS_PER_USER=20000 start gateway-a "$BIN/gateway"
      GA=$LAST
      start persistence "$BIN/workers" persistence
      WP=$LAST
      wait_http $GW_A
      "$BIN/loadgen" fanout --url "http://$GW_A" --connections 10000 --members 10 --rate 0 --duration 5s \
        --gateway-pid "$GA" --json "$OUT/hold.json"
      ;;
    assistant)
      MOCK_OPENAI_ADDR=$MOCK MOCK_TOKENS_PER_SEC=50 start mock "$BIN/mock-openai"
      MP=$LAST
      GATEWAY_ADDR=$GW_A start gateway "$BIN/gateway"
      GW=$LAST
      start persistence "$BIN/workers" persistence
      WP=$LAST
      OPENAI_BASE_URL=http://$MOCK/v1 OPENAI_API_KEY=bench start completion "$BIN/workers" completion
      WC=$LAST
      wait_http $GW_A
      "$BIN/loadgen" assistant --url "http://$GW_A" --streams 200 --tps 50 --tokens 100 --duration "$DURATION" \
        --worker-pid "$WC" --gateway-pid "$GW" --json "$OUT/assistant.json"
      ;;
    *)
      echo "bench: unknown scenario $scenario (rest, fanout, hold, assistant)" >&2
      exit 2
      ;;
  esac
  stop_all
done
echo
echo "reports: $OUT/*.json, logs: $LOGS"
