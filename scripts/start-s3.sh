#!/usr/bin/env bash
# Starts a local S3-protocol server for the S3 store's tests (node/tests/s3_store.rs) and for
# trying `stratus agent --store s3://...` by hand: s3s-fs, a real S3 server over plain
# files, from crates.io. Prints the endpoint on stdout; everything else goes to stderr.
#
#   scripts/start-s3.sh           start it (installing s3s-fs into ~/.cargo/bin on first use,
#                                 by scripts/s3s-fs-bin.sh)
#   scripts/start-s3.sh --stop    stop the server this script started and delete its data
#
# Idempotent: when the endpoint already answers it does nothing but print it. Concurrent
# calls (parallel tests) are serialised with a lock, so only one server starts.
#
# Environment: STRATUS_S3_PORT (default 19000), STRATUS_S3_DIR (default
# /tmp/stratus-s3-$STRATUS_S3_PORT: data, log, pid). Test credentials are fixed:
#   access key stratus-test   secret key stratus-test-secret   region us-east-1
# The first install compiles s3s-fs (several minutes on 2 cores); later runs start at once.
set -euo pipefail

ACCESS_KEY=stratus-test
SECRET_KEY=stratus-test-secret

port="${STRATUS_S3_PORT:-19000}"
dir="${STRATUS_S3_DIR:-/tmp/stratus-s3-$port}"
endpoint="http://127.0.0.1:$port"
stop=0
for arg in "$@"; do
  case "$arg" in
    --stop) stop=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --stop)" >&2; exit 2 ;;
  esac
done

# True when something on the port answers HTTP. Plain bash, so it needs no curl.
answers() {
  timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" >&3
    head -c 5 <&3 | grep -q "^HTTP/"
  ' _ "$port" 2>/dev/null
}

# The pid recorded at start, if that process is still our s3s-fs (pids are reused).
our_pid() {
  local pid
  pid="$(cat "$dir/pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "s3s-fs" ]] || return 1
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
    echo "stopped s3s-fs (pid $pid) on $endpoint" >&2
  else
    echo "no s3s-fs started by this script is running on $endpoint" >&2
  fi
  rm -rf "$dir/data" "$dir/pid" "$dir/server.log"
  exit 0
fi

if answers; then
  echo "$endpoint"
  exit 0
fi

# The lock is not passed on: the install takes a lock of its own.
bin="$(bash "$(dirname "$0")/s3s-fs-bin.sh" 9>&-)"

mkdir -p "$dir/data"
# setsid: the server outlives this script and the test that ran it, and is not killed
# with their process group; later tests find it answering. 9>&-: it must not inherit the
# lock, or every later call would wait for the server to exit.
RUST_LOG="${RUST_LOG:-warn}" setsid "$bin" --host 127.0.0.1 --port "$port" \
  --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" "$dir/data" \
  </dev/null >>"$dir/server.log" 2>&1 9>&- &
echo $! >"$dir/pid"

for _ in $(seq 150); do
  if answers; then
    echo "s3s-fs answering on $endpoint (data in $dir/data, log in $dir/server.log)" >&2
    echo "$endpoint"
    exit 0
  fi
  if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    echo "s3s-fs exited at start; its log:" >&2
    tail -n 20 "$dir/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "s3s-fs did not answer on $endpoint within 15 s; its log:" >&2
tail -n 20 "$dir/server.log" >&2
exit 1
