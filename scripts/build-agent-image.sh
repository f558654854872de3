#!/usr/bin/env bash
# Builds the local Docker image the compose cluster (docker-compose.yml) runs, without any
# registry: nothing is pulled, the image is made from files on this machine.
#
#   stratus/agent:latest  the `stratus` binary at /usr/local/bin/stratus (the entrypoint),
#                         the shared libraries `ldd` lists and the dynamic loader, a static
#                         busybox in /bin for a shell (sh, wget for health checks), /tmp,
#                         /etc/passwd, /etc/group and /etc/nsswitch.conf; /etc/hosts and
#                         /etc/resolv.conf are left to Docker
#
# Usage: scripts/build-agent-image.sh [--force]
# Builds the binary first (`cargo build --release -p node`, honouring CARGO_TARGET_DIR), or
# takes STRATUS_BIN=/path/to/stratus as it is; STRATUS_AGENT_IMAGE names another tag
# (the chaos suite's compose test builds its own from the debug binary). Idempotent: an
# image made from the same binary (label stratus.binary-sha256) is kept unless --force is
# given, so a changed binary always gives a new image. The only network it uses is
# Debian's package archive, when busybox-static is not installed yet.
set -euo pipefail

image="${STRATUS_AGENT_IMAGE:-stratus/agent:latest}"
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --force)" >&2; exit 2 ;;
  esac
done

command -v docker >/dev/null || { echo "docker not found: install Docker Engine first" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=image-lib.sh
source "$root/scripts/image-lib.sh"

# The binary: given, or built here.
if [[ -n ${STRATUS_BIN:-} ]]; then
  binary=$STRATUS_BIN
else
  command -v cargo >/dev/null || { echo "cargo not found: install Rust, or set STRATUS_BIN" >&2; exit 1; }
  (cd "$root" && cargo build --release -p node)
  target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  binary="${target_dir:-$root/target}/release/stratus"
fi
[[ -x $binary ]] || { echo "$binary is not an executable" >&2; exit 1; }
sha=$(sha256sum "$binary" | cut -d' ' -f1)

if [[ $force -eq 0 ]] && [[ $(image_label "$image" stratus.binary-sha256) == "$sha" ]]; then
  echo "$image is up to date with $binary (use --force to rebuild)"
  exit 0
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT

rootfs_busybox "$rootfs"
# The release profile keeps debug info (about 100 MB); the image needs only the code and
# the symbol table.
rootfs_binary "$binary" "$rootfs" /usr/local/bin/stratus
rootfs_import "$rootfs" "$image" \
  'ENTRYPOINT ["/usr/local/bin/stratus"]' \
  'CMD ["--help"]' \
  'ENV PATH=/usr/local/bin:/bin' \
  "LABEL stratus.binary-sha256=$sha"

# The loader and libraries must be complete: run the binary once in the image.
if ! version=$(docker run --rm "$image" --version 2>&1); then
  echo "the image was built but the binary does not run in it: $version" >&2
  exit 1
fi
echo "built $image ($version)"
