#!/bin/sh
# Writes a page naming this replica, then serves it with busybox httpd on $PORT.
# Works in the stratus/busybox image and, with the process runtime, on any host with busybox.
set -eu
www="${TMPDIR:-/tmp}/hello-$$"
mkdir -p "$www"
echo "$GREETING from $STRATUS_APP release $STRATUS_RELEASE replica $STRATUS_REPLICA on node $STRATUS_NODE" > "$www/index.html"
echo "replica $STRATUS_REPLICA of $STRATUS_APP serving on port $PORT"
# -vv logs every request (URL and status) to stderr, which `stratus logs` shows.
exec busybox httpd -f -vv -p "$PORT" -h "$www"
