#!/usr/bin/env bash
# Starts a local image registry for the image pull tests and for trying `image = "..."`
# apps by hand: Debian's docker-registry (the CNCF distribution registry, v2 API), with a
# config and storage of its own, on loopback without TLS or auth. Docker treats registries
# on 127.0.0.0/8 as insecure by default, so `docker push 127.0.0.1:5055/app:1` works with no
# daemon setting. Prints the address (127.0.0.1:PORT) on stdout; everything else on stderr.
#
#   scripts/start-registry.sh          start it (installing docker-registry from Debian's
#                                      packages on first use, as root)
#   scripts/start-registry.sh --stop   stop the registry this script started, delete its data
#
# Idempotent: when the registry already answers it does nothing but print it. Concurrent
# calls (parallel tests) are serialised with a lock, so only one registry starts.
#
# Environment: STRATUS_TEST_REGISTRY_PORT (default 5055), STRATUS_TEST_REGISTRY_DIR (default
# /tmp/stratus-registry-$STRATUS_TEST_REGISTRY_PORT: config, data, log, pid).
set -euo pipefail

port="${STRATUS_TEST_REGISTRY_PORT:-5055}"
dir="${STRATUS_TEST_REGISTRY_DIR:-/tmp/stratus-registry-$port}"
address="127.0.0.1:$port"
stop=0
for arg in "$@"; do
  case "$arg" in
    --stop) stop=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --stop)" >&2; exit 2 ;;
  esac
done

# True when a v2 registry answers on the port (its API root says so in a header).
answers() {
  curl -fsS --max-time 2 -o /dev/null -D - "http://$address/v2/" 2>/dev/null \
    | grep -qi '^docker-distribution-api-version: registry/2'
}

# The pid recorded at start, if that process is still our registry (pids are reused).
our_pid() {
  local pid
  pid="$(cat "$dir/pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "docker-registry" ]] || return 1
  echo "$pid"
}

mkdir -p "$dir"
exec 9>"$dir/lock"
flock 9

if ((stop)); then
  if pid="$(our_pid)"; then
    kill "$pid"
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped docker-registry (pid $pid) on $address" >&2
  else
    echo "no docker-registry started by this script is running on $address" >&2
  fi
  rm -rf "$dir/data" "$dir/pid" "$dir/server.log" "$dir/config.yml"
  exit 0
fi

command -v curl >/dev/null || { echo "curl not found: run scripts/install-deps.sh" >&2; exit 1; }

if answers; then
  echo "$address"
  exit 0
fi

if ! command -v docker-registry >/dev/null; then
  [[ $(id -u) -eq 0 ]] || { echo "docker-registry not found: apt-get install docker-registry (or run this as root)" >&2; exit 1; }
  echo "installing docker-registry from Debian's packages (first use only)..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null; }
fi

mkdir -p "$dir/data"
# Its own config, not the package's /etc/docker/registry (port 5000, htpasswd auth).
cat >"$dir/config.yml" <<CONFIG
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $address
  secret: stratus-test-registry
  headers:
    X-Content-Type-Options: [nosniff]
CONFIG

started=$(date +%s%N)
# setsid: the registry outlives this script and the test that ran it, and is not killed
# with their process group; later tests find it answering. 9>&-: it must not inherit the
# lock, or every later call would wait for the registry to exit.
setsid docker-registry serve "$dir/config.yml" </dev/null >>"$dir/server.log" 2>&1 9>&- &
echo $! >"$dir/pid"

for _ in $(seq 150); do
  if answers; then
    echo "docker-registry answering on $address in $(( ($(date +%s%N) - started) / 1000000 )) ms (data in $dir/data, log in $dir/server.log)" >&2
    echo "$address"
    exit 0
  fi
  if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    echo "docker-registry exited at start; its log:" >&2
    tail -n 20 "$dir/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "docker-registry did not answer on $address within 15 s; its log:" >&2
tail -n 20 "$dir/server.log" >&2
exit 1
