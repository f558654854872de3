#!/usr/bin/env bash
# Checks a live agent against its own OpenAPI document with schemathesis (from PyPI):
# generated requests to every route, as a user and as a peer, must never get a 5xx, and
# every answer must match the document (status, content type, body schema). Bounded: a
# few examples per operation, so it takes about a minute. Used by .ci/run.
#
# The agent runs plain processes (no Docker) on loopback, with a throwaway data dir, and
# without a rate limit (--api-rate-limit 0): schemathesis fires requests as fast as it can,
# and a run of 429s would test the limiter instead of the routes (the 429 answer itself is
# in the document, and api/tests/routes.rs tests it). The node-to-node routes take signed
# calls: scripts/schemathesis_node_auth.py signs each one as an agent does (the agent has no
# cluster key, so the MAC key derives from the cluster id).
# `POST /v1/internal/placements` is left out of the peer run: a generated placement names
# arbitrary holder addresses, and the agent would try to fetch a bundle from them, which
# must never leave this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES="${SCHEMATHESIS_EXAMPLES:-15}"
API=127.0.0.1:7795
TOKEN=schemathesis-user-token
CLUSTER_ID=schemathesis

command -v schemathesis >/dev/null || python3 -m pip install -q 'schemathesis>=4,<5'

cargo build -q -p node --bin stratus
stratus="${CARGO_TARGET_DIR:-target}/debug/stratus"
data="$(mktemp -d)"
"$stratus" agent --node-id schemathesis --cluster-id "$CLUSTER_ID" \
  --gossip-addr 127.0.0.1:7796 --api-addr "$API" --data-dir "$data" \
  --insecure-no-encryption --runtime process --port-range 29000-29099 \
  --api-token "$TOKEN" --api-rate-limit 0 >"$data/agent.log" 2>&1 &
agent=$!
cleanup() {
  kill "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://$API/v1/health" >/dev/null 2>&1 && break
  kill -0 "$agent" 2>/dev/null || { cat "$data/agent.log"; echo "the agent exited" >&2; exit 1; }
  sleep 0.1
done

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
run() {
  schemathesis run "http://$API/v1/openapi.json" --checks "$checks" \
    --max-examples "$EXAMPLES" --request-timeout 10 --no-color "$@"
}
echo "schemathesis: user routes"
# The event stream follows forever unless follow=false, so a generated call would only hit
# the request timeout; its parameters and errors are covered in api/tests/routes.rs.
run -H "Authorization: Bearer $TOKEN" --exclude-path-regex '^/v1/(internal|blobs)/' \
  --exclude-path /v1/events
echo "schemathesis: node-to-node routes"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=scripts.schemathesis_node_auth \
  STRATUS_CLUSTER_ID="$CLUSTER_ID" \
  run --include-path-regex '^/v1/(internal|blobs)/' --exclude-path /v1/internal/placements
# The agent must still be alive and well after all of that.
curl -fsS "http://$API/v1/health" >/dev/null || { cat "$data/agent.log"; echo "the agent died" >&2; exit 1; }
echo "schemathesis: passed"
