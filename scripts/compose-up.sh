#!/usr/bin/env bash
# Starts the 3-node compose cluster (docker-compose.yml) on a machine with no image
# registry, deploys an app to it and shows that a replica answers:
#
#   1. builds the local images: stratus/busybox (scripts/build-images.sh, the apps' default
#      image) and stratus/agent (scripts/build-agent-image.sh, which builds the binary)
#   2. `docker compose up -d` (or docker-compose): node-1..3 and the stratus-compose network
#   3. waits until `stratus nodes` on node-1's API (127.0.0.1:7070) shows 3 live nodes
#   4. `stratus deploy APP_DIR` (default examples/hello) with the cluster's API token
#   5. fetches every replica from a throwaway container on the network (replica IPs are
#      container IPs on stratus-compose, not on the host's loopback)
#
# Usage: scripts/compose-up.sh [--rebuild] [APP_DIR]
#   --rebuild  rebuild both images even if they are up to date
# Environment: STRATUS_CLUSTER_KEY, STRATUS_API_TOKEN, STRATUS_COMPOSE_DATA are read by
# docker-compose.yml (development defaults there); STRATUS_BIN uses a prebuilt binary.
# Remove it all with scripts/compose-down.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=compose-lib.sh
source "$(dirname "$0")/compose-lib.sh"

rebuild=()
app_dir="$root/examples/hello"
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=(--force) ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "unknown argument: $arg" >&2; exit 2 ;;
    *) app_dir=$arg ;;
  esac
done
[[ -f $app_dir/stratus.toml ]] || { echo "$app_dir has no stratus.toml" >&2; exit 2; }
app=$(sed -n 's/^name *= *"\([^"]*\)".*/\1/p' "$app_dir/stratus.toml" | head -n 1)
api=http://127.0.0.1:7070

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

for dir in $(data_dirs); do
  [[ $dir == /* ]] || { echo "data dir $dir must be absolute (STRATUS_COMPOSE_DATA)" >&2; exit 2; }
done

# Two Stratus clusters on one Docker daemon name their containers alike: a replica of the
# same app and release would be taken over by the other cluster's agents.
foreign=$(foreign_app_containers | wc -l)
if [[ $foreign -gt 0 ]]; then
  echo "warning: $foreign Stratus app container(s) of another cluster run on this Docker daemon;" >&2
  echo "         an app deployed by both (same name and release) would collide" >&2
fi

echo "== images"
t=$(now)
"$root/scripts/build-images.sh" "${rebuild[@]}"
"$root/scripts/build-agent-image.sh" "${rebuild[@]}"
stratus=$(stratus_bin)
[[ -x $stratus ]] || { echo "no stratus binary at $stratus" >&2; exit 1; }
echo "images ready in $(since "$t")"

echo "== cluster"
t=$(now)
"${compose[@]}" up -d
live=0
for _ in $(seq 1 120); do
  live=$("$stratus" nodes --api "$api" --json 2>/dev/null | grep -c '"status": *"live"' || true)
  [[ $live -ge ${#nodes[@]} ]] && break
  sleep 0.5
done
"$stratus" nodes --api "$api" || true
if [[ $live -lt ${#nodes[@]} ]]; then
  echo "only $live of ${#nodes[@]} nodes live after 60 s; agent logs:" >&2
  "${compose[@]}" logs --tail 20 >&2
  exit 1
fi
echo "${#nodes[@]} nodes live $(since "$t") after 'up'"

echo "== deploy $app from $app_dir"
t=$(now)
token=$(api_token)
"$stratus" deploy "$app_dir" --api "$api" --token "$token" --timeout-secs 120
echo "deployed in $(since "$t")"
"$stratus" status "$app" --api "$api" --token "$token"

echo "== replicas answer (from a container on $network)"
addrs=$("$stratus" status "$app" --api "$api" --token "$token" --json \
  | sed -n 's/.*"addr": *"\([^"]*\)".*/\1/p' | sort -u)
answered=0
for addr in $addrs; do
  # busybox's own timeout: Debian's static busybox wget crashes with -T.
  if body=$(docker run --rm --network "$network" stratus/busybox:latest \
      timeout 10 wget -q -O - "http://$addr/" 2>&1); then
    echo "http://$addr/ -> $body"
    answered=$((answered + 1))
  else
    echo "http://$addr/ did not answer: $body" >&2
  fi
done
[[ $answered -gt 0 ]] || { echo "no replica of $app answered" >&2; exit 1; }

cat <<EOF
== ready
  API (node-1):  $api            e.g. $stratus nodes --api $api
  token:         STRATUS_API_TOKEN (development default: see docker-compose.yml)
  a replica:     docker run --rm --network $network stratus/busybox wget -qO- http://<addr>/
  logs:          ${compose[*]} logs -f
  remove it all: scripts/compose-down.sh
EOF
