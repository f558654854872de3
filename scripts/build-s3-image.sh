#!/usr/bin/env bash
# Builds the local Docker image of the compose cluster's S3 server (docker-compose.yml,
# profile s3), without any registry: nothing is pulled, the image is made from files on
# this machine, like stratus/agent (scripts/build-agent-image.sh).
#
#   stratus/s3s-fs:latest  s3s-fs, the real S3 server over plain files that the S3 store's
#                          tests run (scripts/start-s3.sh), at /usr/local/bin/s3s-fs (the
#                          entrypoint), its shared libraries and the dynamic loader, a
#                          static busybox in /bin (sh, mkdir, grep for the health check),
#                          and /data, the root it serves: each folder there is a bucket
#
# Usage: scripts/build-s3-image.sh [--force]
# Takes s3s-fs from PATH or ~/.cargo/bin, installing it there on first use
# (scripts/s3s-fs-bin.sh: `cargo install`, several minutes on 2 cores), or
# S3S_FS_BIN=/path/to/s3s-fs as it is; STRATUS_S3_IMAGE names another tag. Idempotent: an
# image made from the same binary (label stratus.binary-sha256) is kept unless --force.
set -euo pipefail

image="${STRATUS_S3_IMAGE:-stratus/s3s-fs:latest}"
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --force)" >&2; exit 2 ;;
  esac
done

command -v docker >/dev/null || { echo "docker not found: install Docker Engine first" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=image-lib.sh
source "$root/scripts/image-lib.sh"

binary="${S3S_FS_BIN:-$(bash "$root/scripts/s3s-fs-bin.sh")}"
[[ -x $binary ]] || { echo "$binary is not an executable" >&2; exit 1; }
sha=$(sha256sum "$binary" | cut -d' ' -f1)

if [[ $force -eq 0 ]] && [[ $(image_label "$image" stratus.binary-sha256) == "$sha" ]]; then
  echo "$image is up to date with $binary (use --force to rebuild)"
  exit 0
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT

rootfs_busybox "$rootfs"
rootfs_binary "$binary" "$rootfs" /usr/local/bin/s3s-fs
mkdir -p "$rootfs/data"
rootfs_import "$rootfs" "$image" \
  'ENTRYPOINT ["/usr/local/bin/s3s-fs"]' \
  'CMD ["--help"]' \
  'ENV PATH=/usr/local/bin:/bin' \
  'EXPOSE 9000' \
  "LABEL stratus.binary-sha256=$sha"

# The loader and libraries must be complete: run the binary once in the image.
if ! version=$(docker run --rm "$image" --version 2>&1); then
  echo "the image was built but s3s-fs does not run in it: $version" >&2
  exit 1
fi
echo "built $image ($version)"
