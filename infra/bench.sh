#!/usr/bin/env bash
# `make bench`: starts a local stack from the release binaries on its own ports, drives it
# with the workspace's load generator (infra/loadgen) and prints the figures. Every run is
# bounded in time and count and targets 127.0.0.1 only. Reports: target/bench/*.json.
#
#   BENCH="rest writes fanout hold assistant cluster"  scenarios to run (default: these; soak
#                                       runs only when asked: BENCH=soak or `make bench soak`)
#   BENCH_DURATION=10s                  length of each measured phase
#   HOLD_CONNECTIONS=10000              idle WebSockets of the hold scenario (each process
#                                       needs as many file descriptors: ulimit -n), spread
#                                       over 16 source addresses in 127.0.0.0/8
#   SOAK_DURATION=10m SOAK_CHURN=500 SOAK_RATE=2000 SOAK_CONNECTIONS=2000
#                                       the soak (`make bench soak`, not part of the default
#                                       set): connects + closes/s, messages/s, steady sockets
#
# rest:    64 REST clients, a GET every 20 sends (each GET reads the whole chat, up to 500)
# writes:  the same without GETs: what a persisted send costs Redis
# cluster: rest, writes (also with REDIS_WAIT_REPLICAS=1) and fanout against a 3-primary
#          Redis Cluster (one replica each)
# soak:    SOAK_CONNECTIONS subscribers in chats of 10 with SOAK_RATE messages/s in total and
#          SOAK_CHURN extra connects + closes per second, sampled every 10 s: gateway RSS flat
#          within 10% after a 60 s warm-up, no leaked fds, p99 per window within 2x the median
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
OUT=target/bench
LOGS=$OUT/logs
SCENARIOS=${BENCH:-rest writes fanout hold assistant cluster}
DURATION=${BENCH_DURATION:-10s}
HOLD_CONNECTIONS=${HOLD_CONNECTIONS:-10000}
SOAK_DURATION=${SOAK_DURATION:-10m}
SOAK_CHURN=${SOAK_CHURN:-500}
SOAK_RATE=${SOAK_RATE:-2000}
SOAK_CONNECTIONS=${SOAK_CONNECTIONS:-2000}
REDIS_PORT=6395
CLUSTER_PORTS="6401 6402 6403 6404 6405 6406"
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

# Stops the gateways and workers of the last run, keeping Redis (the cluster) up.
stop_workers() {
  pkill -TERM -f "^$BIN/(gateway|workers)" 2>/dev/null || true
  sleep 1
  pkill -KILL -f "^$BIN/(gateway|workers)" 2>/dev/null || true
}

export REDIS_URL=redis://127.0.0.1:$REDIS_PORT RUST_LOG=warn
# Every load client comes from 127.0.0.1: per-address abuse limits would throttle the load
# itself (fanout signs up its users; assistant drives open conversations with the assistant).
export SIGNUPS_PER_MIN_PER_ADDR=0 LOGIN_MAX_FAILURES_PER_ADDR=0 MAX_CONNECTIONS_PER_ADDR=0
export ANON_WRITES_PER_SEC_PER_ADDR=0
export ASSISTANT_IN_OPEN_CONVERSATIONS=true ASSISTANT_OPEN_MESSAGES_PER_MIN_PER_ADDR=0
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

# A 3-primary cluster with one replica each on $CLUSTER_PORTS (bus ports +10000).
fresh_cluster() {
  local urls=() addrs=()
  for port in $CLUSTER_PORTS; do
    port_free "$port" || { echo "bench: port $port is in use; stop what holds it" >&2; exit 1; }
    rm -rf "$OUT/cluster/$port"; mkdir -p "$OUT/cluster/$port"
    start "redis-$port" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --dir "$OUT/cluster/$port" --maxclients 20000
    urls+=("redis://127.0.0.1:$port"); addrs+=("127.0.0.1:$port")
  done
  for port in $CLUSTER_PORTS; do
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$LOGS/cluster-create.log" 2>&1
  for _ in $(seq 1 100); do
    ok=1
    for port in $CLUSTER_PORTS; do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q cluster_state:ok || ok=0
      redis-cli -p "$port" info replication 2>/dev/null | grep -q master_sync_in_progress:1 && ok=0
    done
    [ $ok = 1 ] && break
    sleep 0.2
  done
  CLUSTER_URL=$(IFS=,; echo "${urls[*]}")
}

rest_run() {  # rest_run NAME [loadgen args...]
  local name=$1; shift
  GATEWAY_ADDR=$GW_A start gateway "$BIN/gateway"
  GW=$LAST
  start persistence "$BIN/workers" persistence
  WP=$LAST
  wait_http $GW_A
  "$BIN/loadgen" rest --url "http://$GW_A" --clients 64 --duration "$DURATION" \
    --redis-url "$REDIS_URL" --gateway-pid "$GW" --worker-pid "$WP" --json "$OUT/$name.json" "$@"
}

fanout_run() {  # fanout_run NAME
  GATEWAY_ADDR=$GW_A start gateway-a "$BIN/gateway"
  GA=$LAST
  GATEWAY_ADDR=$GW_B start gateway-b "$BIN/gateway"
  GB=$LAST
  start persistence "$BIN/workers" persistence
  WP=$LAST
  wait_http $GW_A; wait_http $GW_B
  "$BIN/loadgen" fanout --url "http://$GW_A" --url "http://$GW_B" --connections 2000 --members 10 --rate 4000 \
    --duration "$DURATION" --gateway-pid "$GA" --gateway-pid "$GB" --worker-pid "$WP" \
    --redis-url "$REDIS_URL" --json "$OUT/$1.json"
}

machine | tee "$OUT/machine.txt"
for scenario in $SCENARIOS; do
  echo
  echo "================ $scenario ================"
  fresh_redis
  case $scenario in
    rest)
      rest_run rest --redis-pid "$REDIS_PID"
      ;;
    writes)
      rest_run writes --redis-pid "$REDIS_PID" --get-every 0
      ;;
    fanout)
      fanout_run fanout
      ;;
    hold)
      GATEWAY_ADDR=$GW_A WS_MAX_CONNECTIONS=$((HOLD_CONNECTIONS + 1000)) \
        WS_MAX_CONNECTIONS_PER_USER=$HOLD_CONNECTIONS start gateway-a "$BIN/gateway"
      GA=$LAST
      start persistence "$BIN/workers" persistence
      WP=$LAST
      wait_http $GW_A
      "$BIN/loadgen" fanout --url "http://$GW_A" --connections "$HOLD_CONNECTIONS" --members 10 --rate 0 --duration 5s \
        --source-addrs 16 --gateway-pid "$GA" --json "$OUT/hold.json"
      ;;
    soak)
      GATEWAY_ADDR=$GW_A start gateway-a "$BIN/gateway"
      GA=$LAST
      start persistence "$BIN/workers" persistence
      WP=$LAST
      wait_http $GW_A
      "$BIN/loadgen" fanout --url "http://$GW_A" --connections "$SOAK_CONNECTIONS" --members 10 \
        --rate "$SOAK_RATE" --churn "$SOAK_CHURN" --duration "$SOAK_DURATION" --sample 10s --warmup 60s \
        --source-addrs 16 --gateway-pid "$GA" --worker-pid "$WP" --redis-pid "$REDIS_PID" \
        --redis-url "$REDIS_URL" --json "$OUT/soak.json"
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
    cluster)
      stop_all
      fresh_cluster
      STANDALONE_URL=$REDIS_URL
      export REDIS_URL=$CLUSTER_URL REDIS_CLUSTER=true
      echo "-- cluster: REST sends with GETs --"
      rest_run cluster-rest
      stop_workers
      echo "-- cluster: REST sends only --"
      rest_run cluster-writes --get-every 0
      stop_workers
      echo "-- cluster: REST sends only, each acknowledged after WAIT 1 --"
      REDIS_WAIT_REPLICAS=1 rest_run cluster-writes-wait1 --get-every 0
      stop_workers
      echo "-- cluster: fan-out through sharded Pub/Sub --"
      fanout_run cluster-fanout
      export REDIS_URL=$STANDALONE_URL REDIS_CLUSTER=false
      ;;
    *)
      echo "bench: unknown scenario $scenario (rest, writes, fanout, hold, assistant, cluster, soak)" >&2
      exit 2
      ;;
  esac
  stop_all
done
echo
echo "reports: $OUT/*.json, logs: $LOGS"
