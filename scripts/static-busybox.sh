#!/usr/bin/env bash
# Makes sure a statically linked busybox is installed (Debian's busybox-static puts it at
# /bin/busybox; a dynamic one would need the host's libc inside an image) and prints its
# path. Shared by the image scripts.
set -euo pipefail
busybox=/bin/busybox
# ldd succeeds only on a dynamic executable.
if [[ ! -x $busybox ]] || LC_ALL=C ldd "$busybox" >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "$busybox (static) is missing: run 'apt-get install busybox-static' as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq busybox-static >/dev/null
fi
echo "$busybox"
