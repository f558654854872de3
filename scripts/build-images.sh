#!/usr/bin/env bash
# Builds the local Docker images Stratus tests and examples run, without any registry:
# this workplace (and a self-hosted fleet behind a firewall) cannot pull, so the node
# never pulls either and images come from here.
#
#   stratus/busybox:latest  a static busybox (sh, httpd, nc, ...) with its applets in /bin,
#                           /tmp and a `nobody` user; `busybox httpd -f -p $PORT -h /app` serves
#                           a bundle mounted at /app
#   stratus/python:3.11     the source builders' base images, from Debian's packages by
#   stratus/node:18         scripts/build-base-images.sh (as root; 1-2 minutes for both when
#                           missing, packages cached under /var/cache/stratus/debootstrap)
#
# Usage: scripts/build-images.sh [--force]
# Idempotent: an image that already exists is kept unless --force is given (which rebuilds
# the base images too). busybox comes first, so a machine that cannot build the base images
# (no root) still gets the image most tests run. The only network it uses is Debian's
# package archive, when busybox-static is not installed yet or a base image is missing.
set -euo pipefail

image="stratus/busybox:latest"
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --force)" >&2; exit 2 ;;
  esac
done

command -v docker >/dev/null || { echo "docker not found: install Docker Engine first" >&2; exit 1; }

base_images() {
  if [[ $force -eq 1 ]]; then
    bash "$(dirname "$0")/build-base-images.sh" --force
  else
    bash "$(dirname "$0")/build-base-images.sh"
  fi
}

if [[ $force -eq 0 ]] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image already exists (use --force to rebuild)"
  base_images
  exit 0
fi

busybox=$(bash "$(dirname "$0")/static-busybox.sh")
"$busybox" --list | grep -qx httpd \
  || { echo "$busybox has no httpd applet: install Debian's busybox-static" >&2; exit 1; }

# shellcheck source-path=SCRIPTDIR source=image-lib.sh
source "$(dirname "$0")/image-lib.sh"
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
rootfs_busybox "$rootfs"
# Where replicas get their bundle mounted.
mkdir -p "$rootfs/app"
rootfs_import "$rootfs" "$image" 'CMD ["/bin/sh"]' 'ENV PATH=/bin'
echo "built $image"

base_images
