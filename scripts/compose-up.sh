#!/usr/bin/env bash
# Starts the compose cluster (docker-compose.yml: 3 agents and an ingress) on a machine with
# no image registry, deploys an app to it and shows it answering through the ingress:
#
#   1. builds the local images: stratus/busybox (scripts/build-images.sh, the apps' default
#      image), stratus/agent (scripts/build-agent-image.sh, which builds the binary) and,
#      with --s3, stratus/s3s-fs (scripts/build-s3-image.sh)
#   2. `docker compose up -d` (or docker-compose): node-1..3, the ingress, the
#      stratus-compose network and, with --s3, the S3 server
#   3. waits until `stratus nodes` on node-1's API (127.0.0.1:7070) shows the 4 members live
#   4. `stratus deploy APP_DIR` (default examples/hello) with the cluster's API token
#   5. with --s3: finds the release's bundle in the bucket, by its sha256
#   6. asks the ingress (127.0.0.1:8080, Host: APP.localhost) for / until the replicas
#      answer, prints their answers, and prints the dashboard's URL
#
# Usage: scripts/compose-up.sh [--rebuild] [--s3] [APP_DIR]
#   --rebuild  rebuild the images even if they are up to date
#   --s3       keep the bundles in S3: the `s3` profile's s3s-fs, with docker-compose.s3.yml
# Environment: STRATUS_CLUSTER_KEY, STRATUS_API_TOKEN, STRATUS_COMPOSE_DATA and the other
# variables listed at the top of docker-compose.yml are read there (development defaults);
# STRATUS_BIN uses a prebuilt binary.
# Remove it all with scripts/compose-down.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=compose-lib.sh
source "$(dirname "$0")/compose-lib.sh"

rebuild=()
s3=0
app_dir="$root/examples/hello"
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=(--force) ;;
    --s3) s3=1 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "unknown argument: $arg" >&2; exit 2 ;;
    *) app_dir=$arg ;;
  esac
done
[[ -f $app_dir/stratus.toml ]] || { echo "$app_dir has no stratus.toml" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl not found: install it (scripts/install-deps.sh does)" >&2; exit 1; }
app=$(sed -n 's/^name *= *"\([^"]*\)".*/\1/p' "$app_dir/stratus.toml" | head -n 1)
((s3)) && use_s3

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
started=$(now)

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
((s3)) && "$root/scripts/build-s3-image.sh" "${rebuild[@]}"
stratus=$(stratus_bin)
[[ -x $stratus ]] || { echo "no stratus binary at $stratus" >&2; exit 1; }
echo "images ready in $(since "$t")"

echo "== cluster"
t=$(now)
"${compose[@]}" up -d
live=0
for _ in $(seq 1 120); do
  live=$("$stratus" nodes --api "$api" --json 2>/dev/null | grep -c '"status": *"live"' || true)
  [[ $live -ge ${#members[@]} ]] && break
  sleep 0.5
done
"$stratus" nodes --api "$api" || true
if [[ $live -lt ${#members[@]} ]]; then
  echo "only $live of ${#members[@]} members live after 60 s; their logs:" >&2
  "${compose[@]}" logs --tail 20 >&2
  exit 1
fi
echo "${#members[@]} members live (${members[*]}) $(since "$t") after 'up'"

echo "== deploy $app from $app_dir"
t=$(now)
token=$(api_token)
"$stratus" deploy "$app_dir" --api "$api" --token "$token" --timeout-secs 120
echo "deployed in $(since "$t")"
"$stratus" status "$app" --api "$api" --token "$token"

if ((s3)); then
  bucket=$(compose_config | sed -n 's/^ *STRATUS_STORE: *s3:\/\///p' | head -n 1 | tr -d "'\"")
  echo "== the bundle in S3 (bucket $bucket)"
  # The release's bundle, by its sha256 (the only such field of the app's view).
  sha=$("$stratus" status "$app" --api "$api" --token "$token" --json \
    | sed -n 's/.*"sha256": *"\([0-9a-f]\{64\}\)".*/\1/p' | head -n 1)
  [[ -n $sha ]] || { echo "no bundle sha256 in the status of $app" >&2; exit 1; }
  # s3s-fs keeps each object as a file under its bucket's folder, named by its key (the
  # store's prefix, then the sha256).
  object=$("${compose[@]}" exec -T s3 find "/data/$bucket" -type f -name "$sha" 2>&1 | head -n 1 || true)
  if [[ $object != "/data/$bucket/"* ]]; then
    echo "the release's bundle ($sha) is not in the bucket: $object" >&2
    "${compose[@]}" exec -T s3 find /data >&2 || true
    exit 1
  fi
  size=$("${compose[@]}" exec -T s3 stat -c %s "$object")
  echo "s3://$bucket/${object#"/data/$bucket/"}: $size bytes (the release's bundle, by its sha256)"
fi

echo "== $app answers through the ingress ($ingress, Host: $app.localhost)"
t=$(now)
# The ingress learns a replica from its own gossip view, a moment after node-1 reports it
# routable: ask until it answers, then a few times more to see the replicas take turns.
answered=0
last=""
first=""
for _ in $(seq 1 60); do
  if body=$(curl -sS --fail --max-time 5 -H "Host: $app.localhost" "$ingress/" 2>&1); then
    answered=$((answered + 1))
    [[ -n $first ]] || first=$(since "$t")
    echo "GET $ingress/ -> $body"
    [[ $answered -ge 4 ]] && break
  else
    last=$body
    sleep 0.5
  fi
done
if [[ $answered -eq 0 ]]; then
  echo "$app did not answer through the ingress after 30 s: $last; the ingress's log:" >&2
  "${compose[@]}" logs --tail 20 ingress >&2
  exit 1
fi
echo "$answered answers through the ingress, the first $first after the first try"

store="on the nodes (local store)"
if ((s3)); then
  store="s3://$bucket on s3s-fs, $(host_url "${STRATUS_COMPOSE_S3:-127.0.0.1:9000}") (keys: see docker-compose.yml)"
fi
cat <<EOF
== ready in $(since "$started")
  the app:       curl -H 'Host: $app.localhost' $ingress/
  dashboard:     $api/   (sign in with the API token)
  API (node-1):  $api            e.g. $stratus nodes --api $api
  token:         STRATUS_API_TOKEN (development default: see docker-compose.yml)
  bundles:       $store
  events:        $stratus events -f --api $api --token \$STRATUS_API_TOKEN
  logs:          ${compose[*]} logs -f
  remove it all: scripts/compose-down.sh
EOF
