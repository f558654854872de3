#!/bin/sh
# Instructions per request of one of `bench ingress`'s proxies, by callgrind: repeatable
# whatever else the machine runs, unlike req/s. One proxy thread, `wrk -t1 -c8` for
# $SECONDS_LOADED s after a warm-up, instructions counted only while wrk runs (callgrind
# starts with instrumentation off), divided by the requests wrk completed.
#
#   cargo build --release -p testbed
#   ingress/scripts/callgrind.sh stratus            # the ingress with its access log
#   ingress/scripts/callgrind.sh stratus-no-log     # ... without it
#   ingress/scripts/callgrind.sh pingora            # Pingora with no hooks of ours
#
# Prints the figure and leaves the profile in $OUT (callgrind_annotate reads it). Needs
# valgrind and wrk (apt-get install valgrind wrk).
set -eu
target=${1:-stratus}
root=$(cd "$(dirname "$0")/../.." && pwd)
testbed=${TESTBED:-${CARGO_TARGET_DIR:-$root/target}/release/testbed}
out=${OUT:-/tmp/callgrind.$target.out}
seconds=${SECONDS_LOADED:-10}
backend=127.0.253.1:18181
proxy=127.0.253.2:18182
case $target in
  stratus) run="bench-ingress" ;;
  stratus-no-log) run="bench-ingress --no-access-log" ;;
  pingora) run="bench-pingora" ;;
  *) echo "unknown target $target (stratus, stratus-no-log, pingora)" >&2; exit 2 ;;
esac
"$testbed" bench-backend --listen $backend --threads 1 &
backend_pid=$!
rm -f "$out"*
# shellcheck disable=SC2086
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "$testbed" $run --listen $proxy --backend $backend --threads 1 2>/tmp/callgrind.$target.log &
proxy_pid=$!
trap 'kill $proxy_pid $backend_pid 2>/dev/null || true' EXIT
i=0
until curl -sf -o /dev/null -H 'Host: bench.localhost' http://$proxy/; do
  i=$((i + 1)); [ $i -lt 600 ] || { echo "the proxy does not answer" >&2; exit 1; }
  sleep 0.1
done
wrk -t1 -c8 -d3s -H 'Host: bench.localhost' http://$proxy/ >/dev/null
callgrind_control -i on $proxy_pid >/dev/null
requests=$(wrk -t1 -c8 -d${seconds}s -H 'Host: bench.localhost' http://$proxy/ | awk '/requests in/ {print $1}')
callgrind_control -i off $proxy_pid >/dev/null
callgrind_control -d $proxy_pid >/dev/null
sleep 1
# The dump callgrind_control asked for: the instructions while instrumentation was on.
dump=$out.1
total=$(awk '/^totals:/ {print $2}' "$dump")
echo "$target: $total instructions over $requests requests: $((total / requests)) per request ($dump)"
