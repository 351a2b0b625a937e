#!/usr/bin/env bash
# Schemathesis against a live gateway (`make api-test`, part of `make test`).
#
# Starts its own Redis, one gateway and one persistence worker on free 127.0.0.1 ports, signs
# up a user for the bearer token, then lets Schemathesis (pinned in infra/requirements-test.txt)
# generate requests from the served `GET /openapi.json` and check every response:
#   not_a_server_error             no 5xx but the documented 503/504;
#   status_code_conformance        every status is one the document lists for that route;
#   response_schema_conformance    every body matches the document's schema for that status;
#   content_type_conformance       every body is the documented media type.
# Bounded: SCHEMATHESIS_MAX_EXAMPLES cases per operation (default 40) and
# SCHEMATHESIS_MAX_TIME seconds for the main run (default 90; sign-out gets 20). `/ws` is left
# out: Schemathesis speaks HTTP only, and the WebSocket handshake has its own e2e tests.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${VENV:-.run/venv}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-40}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-90}
ST=$VENV/bin/schemathesis

die() { echo "!! $*" >&2; exit 1; }
[ -x "$ST" ] || die "$ST is missing: make deps-py"
for b in gateway workers; do [ -x "$BIN/$b" ] || die "$BIN/$b is missing: make build"; done
command -v redis-server >/dev/null || die "redis-server is missing: make deps-run"

TMP=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port)
GATEWAY_PORT=$(free_port)
BASE=http://127.0.0.1:$GATEWAY_PORT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$TMP" >"$TMP/redis.log" 2>&1 &
pids+=($!)

# Schemathesis sends everything from 127.0.0.1: the per-address limits are off so that it tests
# the routes rather than the limiter (the limiter has its own e2e tests). The open assistant is on,
# so that `{"assistant":true}` is accepted; no completion worker runs, so its jobs just wait.
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT GATEWAY_ADDR=127.0.0.1:$GATEWAY_PORT \
  LOG_FORMAT=json RUST_LOG=warn \
  LOGIN_MAX_FAILURES=0 LOGIN_MAX_FAILURES_PER_ADDR=0 SIGNUPS_PER_MIN_PER_ADDR=0 \
  ANON_WRITES_PER_SEC_PER_ADDR=0 MAX_CONNECTIONS_PER_ADDR=0 \
  ASSISTANT_IN_OPEN_CONVERSATIONS=true ASSISTANT_OPEN_MESSAGES_PER_MIN_PER_ADDR=0
"$BIN/gateway" >"$TMP/gateway.log" 2>&1 &
pids+=($!)
"$BIN/workers" persistence >"$TMP/persistence.log" 2>&1 &
pids+=($!)

ready=""
for _ in $(seq 1 100); do
  if curl -fsS "$BASE/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { tail -20 "$TMP"/*.log; die "the gateway did not become ready on $BASE"; }

# A fresh user and session token; sign-out gets its own run and token, since it revokes the one
# it is sent with.
token() {
  local user=st$RANDOM$RANDOM
  curl -fsS -X POST "$BASE/api/users" -H 'content-type: application/json' \
    -d "{\"username\":\"$user\",\"password\":\"schemathesis-pass\"}" >/dev/null || return 1
  curl -fsS -X POST "$BASE/api/sessions" -H 'content-type: application/json' \
    -d "{\"username\":\"$user\",\"password\":\"schemathesis-pass\"}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}

run() {
  local what=$1 tok; shift
  tok=$(token) || die "signing up a user for the $what run failed"
  echo "== Schemathesis $("$ST" --version | awk '{print $NF}'): $what against $BASE/openapi.json" \
    "(at most $MAX_EXAMPLES cases per operation)"
  "$ST" run "$BASE/openapi.json" \
    --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
    --header "Authorization: Bearer $tok" \
    --phases examples,coverage,fuzzing \
    --max-examples "$MAX_EXAMPLES" \
    --workers 1 --request-timeout 10 --seed "${SCHEMATHESIS_SEED:-20261203}" \
    --generation-database none --no-color --warnings off "$@"
}

status=0
START=$SECONDS
run "every route but sign-out and /ws" --exclude-path /ws --exclude-operation-id signOut \
  --max-time "$MAX_TIME" || status=$?
run "sign-out" --include-operation-id signOut --max-time 20 || status=$?

if [ "$status" != 0 ]; then
  echo "-- gateway log (last 30 lines)"; tail -30 "$TMP/gateway.log"
  die "Schemathesis found responses that do not match gateway/src/rest/openapi.json"
fi
# Every generated request must have been answered by a live stack, not by a dead worker.
kill -0 "${pids[1]}" && kill -0 "${pids[2]}" || die "the gateway or the persistence worker died"
echo "== Schemathesis passed in $((SECONDS - START))s"
