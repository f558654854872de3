#!/bin/sh
# Writes a page naming this replica, then serves it with busybox httpd on $PORT.
# Works in the stratus/busybox image and, with the process runtime, on any host with busybox.
set -eu
www="${TMPDIR:-/tmp}/hello-$$"
mkdir -p "$www"
echo "$GREETING from $STRATUS_APP release $STRATUS_RELEASE replica $STRATUS_REPLICA on node $STRATUS_NODE" > "$www/index.html"
exec busybox httpd -f -p "$PORT" -h "$www"
