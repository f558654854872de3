# shellcheck shell=bash disable=SC2034
# Shared by scripts/compose-up.sh and scripts/compose-down.sh (sourced, not run). Reads the
# variables docker-compose.yml reads (STRATUS_COMPOSE_NETWORK, _API, _INGRESS...), so both
# scripts drive a second cluster beside the first just as compose does.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The network docker-compose.yml names; app containers join it.
network=${STRATUS_COMPOSE_NETWORK:-stratus-compose}
nodes=(node-1 node-2 node-3)
# Every member: the agents and the ingress.
members=("${nodes[@]}" ingress)

command -v docker >/dev/null || { echo "docker not found: install Docker Engine first" >&2; exit 1; }

# Compose v2 (`docker compose`) if present, else v1 (`docker-compose`); both read the same file.
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "neither 'docker compose' nor 'docker-compose' found: install Docker Compose" >&2
  exit 1
fi
compose+=(--project-directory "$root" -f "$root/docker-compose.yml")

# The agents and the ingress keep their bundles in the s3 profile's server from here on
# (docker-compose.s3.yml on top, and the profile enabled).
use_s3() {
  compose+=(-f "$root/docker-compose.s3.yml" --profile s3)
}

# http://HOST:PORT on this machine for a published address as compose reads it
# (HOST:PORT, or PORT alone for every interface).
host_url() {
  local addr=$1 host port
  port=${addr##*:}
  host=${addr%"$port"}
  host=${host%:}
  [[ -z $host || $host == 0.0.0.0 ]] && host=127.0.0.1
  echo "http://$host:$port"
}
api=$(host_url "${STRATUS_COMPOSE_API:-127.0.0.1:7070}")
ingress=$(host_url "${STRATUS_COMPOSE_INGRESS:-127.0.0.1:8080}")

# The file after interpolation of the environment and .env: the one source of truth for the
# data dirs and the token.
compose_config() {
  "${compose[@]}" config
}

# Host data dirs of the agents, from their --data-dir flags.
data_dirs() {
  compose_config | sed -n 's/^ *- *--data-dir=//p' | tr -d "'\""
}

# The API token the agents were given.
api_token() {
  compose_config | sed -n 's/^ *STRATUS_API_TOKEN: *//p' | head -n 1 | tr -d "'\""
}

# App containers started by this cluster's agents: labelled by Stratus and attached to its
# network (read from the container's configuration, so exited ones count too).
app_containers() {
  local id
  for id in $(docker ps -aq --filter label=stratus.app); do
    if [[ $(docker inspect -f '{{.HostConfig.NetworkMode}}' "$id" 2>/dev/null) == "$network" ]]; then
      echo "$id"
    fi
  done
}

# Stratus app containers of some other cluster on this Docker daemon.
foreign_app_containers() {
  local id
  for id in $(docker ps -aq --filter label=stratus.app); do
    if [[ $(docker inspect -f '{{.HostConfig.NetworkMode}}' "$id" 2>/dev/null) != "$network" ]]; then
      echo "$id"
    fi
  done
}

# The stratus binary on this host, for the CLI.
stratus_bin() {
  if [[ -n ${STRATUS_BIN:-} ]]; then
    echo "$STRATUS_BIN"
    return
  fi
  local target_dir
  target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  echo "${target_dir:-$root/target}/release/stratus"
}
