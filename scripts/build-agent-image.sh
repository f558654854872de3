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

if [[ $force -eq 0 ]] \
  && [[ $(docker image inspect -f '{{index .Config.Labels "stratus.binary-sha256"}}' "$image" 2>/dev/null) == "$sha" ]]; then
  echo "$image is up to date with $binary (use --force to rebuild)"
  exit 0
fi

busybox=$(bash "$(dirname "$0")/static-busybox.sh")

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT

mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root,usr/local/bin,var/lib}
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] && continue
  ln -sf busybox "$rootfs/bin/$applet"
done
ln -s ../bin "$rootfs/usr/bin"
ln -s bin "$rootfs/sbin"

# The release profile keeps debug info (about 100 MB); the image needs only the code and
# the symbol table (for readable backtraces).
cp "$binary" "$rootfs/usr/local/bin/stratus"
if command -v strip >/dev/null; then
  strip --strip-debug "$rootfs/usr/local/bin/stratus"
fi

# Every library the binary links, at the path the loader will look for it, plus the loader
# itself (`ldd` prints it as an absolute path with no `=>`). A static binary has none.
if libs=$(LC_ALL=C ldd "$binary" 2>/dev/null); then
  while read -r lib; do
    [[ -n $lib ]] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs" | sort -u)
fi

cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
# Host names (the agent's own, for its default advertise address) come from Docker's
# /etc/hosts first, then Docker's DNS.
echo 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"

tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . \
  | docker import \
      -c 'ENTRYPOINT ["/usr/local/bin/stratus"]' \
      -c 'CMD ["--help"]' \
      -c 'ENV PATH=/usr/local/bin:/bin' \
      -c "LABEL stratus.binary-sha256=$sha" \
      - "$image" >/dev/null

# The loader and libraries must be complete: run the binary once in the image.
if ! version=$(docker run --rm "$image" --version 2>&1); then
  echo "the image was built but the binary does not run in it: $version" >&2
  exit 1
fi
echo "built $image ($version)"
