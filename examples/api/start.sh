#!/bin/sh
# Writes a page naming this replica, then serves it with busybox httpd on $PORT.
set -eu
www="${TMPDIR:-/tmp}/api-$$"
mkdir -p "$www"
echo "$GREETING from $STRATUS_APP release $STRATUS_RELEASE replica $STRATUS_REPLICA on node $STRATUS_NODE" > "$www/index.html"
echo "api replica $STRATUS_REPLICA serving on port $PORT"
exec busybox httpd -f -p "$PORT" -h "$www"
