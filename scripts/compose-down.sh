#!/usr/bin/env bash
# Removes the compose cluster (docker-compose.yml) and everything it made: the agent and
# ingress containers, the app containers the agents started (label stratus.app, on the
# stratus-compose network), the network, the S3 server and its volume (the bucket's data)
# if the s3 profile ran, and the members' data dirs on the host (STRATUS_COMPOSE_DATA,
# default /var/lib/stratus-compose). Images are kept (remove stratus/agent,
# stratus/s3s-fs and stratus/busybox with `docker rmi` if wanted).
#
# Usage: scripts/compose-down.sh
# Reads the same variables as compose-up.sh (STRATUS_COMPOSE_NETWORK, COMPOSE_PROJECT_NAME...).
# Containers of another Stratus cluster on the same Docker daemon are left alone.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=compose-lib.sh
source "$(dirname "$0")/compose-lib.sh"

case "${1:-}" in
  "") ;;
  -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
esac

mapfile -t dirs < <(data_dirs)

# Agents first: a running agent would start its replicas again as they are removed.
"${compose[@]}" --profile s3 stop

mapfile -t apps < <(app_containers)
if [[ ${#apps[@]} -gt 0 ]]; then
  echo "removing ${#apps[@]} app container(s)"
  docker rm -f "${apps[@]}" >/dev/null
fi

"${compose[@]}" --profile s3 down --volumes --remove-orphans

# The data dirs hold root-owned files written by the agents: remove them through a
# container when this user cannot. Only the agents' own dirs, never their parent's content.
for dir in "${dirs[@]}"; do
  [[ $dir == /* && -e $dir ]] || continue
  if ! rm -rf "$dir" 2>/dev/null; then
    docker run --rm -v "$(dirname "$dir"):/parent" stratus/busybox:latest \
      rm -rf "/parent/$(basename "$dir")"
  fi
  echo "removed $dir"
done
# Their parent too, when it is now empty.
for dir in "${dirs[@]}"; do
  rmdir "$(dirname "$dir")" 2>/dev/null || true
done
echo "compose cluster removed"
