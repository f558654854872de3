#!/usr/bin/env bash
# Runs the chaos suite's docker-compose variant (testbed/tests/chaos_compose.rs): five
# agents as containers of docker-compose.yml + scripts/chaos-compose.yml on a compose
# network of their own, an app of 3 replicas, continuous traffic through node-1's ingress,
# and
#   1. host loss: `docker kill` of an agent running a replica and of its app containers;
#      the replica count returns to 3 on the other nodes;
#   3. partition: two agents cut off with `docker network disconnect`, reconnected with
#      their addresses; exactly 3 replicas remain and the release is intact.
# Each asserts its outcome and prints its timings.
#
# Usage: scripts/chaos-compose.sh
# Needs Docker with Compose (v2 plugin or v1 docker-compose) and Rust. Builds the debug
# `stratus` binary, the image stratus/agent:chaos-49 from it, and publishes on 127.0.49.x;
# removes its containers, network and data when done, pass or fail.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

case "${1:-}" in
  "") ;;
  -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
esac

cargo build -p node --bin stratus
cargo test -p testbed --test chaos_compose -- --nocapture --test-threads 1
