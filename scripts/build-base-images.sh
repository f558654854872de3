#!/usr/bin/env bash
# Builds the base images of the source builders (issue 11) from Debian's packages, since no
# image registry can be reached here: a minimal Debian root (debootstrap --variant=minbase)
# with the runtime installed, docs, manuals, locales and package caches removed, imported
# as an image. The host's extra certificate authorities (/usr/local/share/ca-certificates)
# are trusted inside, so builds reach package indexes through the same proxies the host does.
#
#   stratus/python:3.11   Debian bookworm's python3 (3.11) with pip and venv (~145 MB)
#   stratus/node:18       Debian bookworm's nodejs (18) with npm (~300 MB)
#
# Usage: scripts/build-base-images.sh [--force] [python|node ...]   (default: both)
# Idempotent: an image that exists is kept unless --force. Needs root (debootstrap, chroot)
# and Debian's package archive (DEBIAN_MIRROR). The images are built at the same time, each
# under a lock of its own, so concurrent calls (CI, parallel tests) build an image once: a
# caller that waited finds it built. Downloaded packages are kept per image under
# $STRATUS_CACHE_DIR/debootstrap (default /var/cache/stratus/debootstrap) and pruned to
# what the last build installed: a cold build takes 1-2 minutes, a rebuild (--force) with
# the cache downloads only what Debian updated since.
set -euo pipefail

mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache_root="${STRATUS_CACHE_DIR:-/var/cache/stratus}/debootstrap"
suite=bookworm
force=0
wanted=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    python|node) wanted+=("$arg") ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --force, python or node)" >&2; exit 2 ;;
  esac
done
[[ ${#wanted[@]} -gt 0 ]] || wanted=(python node)

command -v docker >/dev/null || { echo "docker not found: install Docker Engine first" >&2; exit 1; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }

declare -A image=([python]=stratus/python:3.11 [node]=stratus/node:18)

# Nothing to do (the common case in CI): no root, apt or cache needed.
if [[ $force -eq 0 ]]; then
  missing=0
  for runtime in "${wanted[@]}"; do
    exists "${image[$runtime]}" || missing=1
  done
  if [[ $missing -eq 0 ]]; then
    for runtime in "${wanted[@]}"; do
      echo "${image[$runtime]} already exists (use --force to rebuild)"
    done
    exit 0
  fi
fi

[[ $(id -u) -eq 0 ]] || { echo "building the base images needs root (debootstrap, chroot)" >&2; exit 1; }
mkdir -p "$cache_root"
if ! command -v debootstrap >/dev/null; then
  # Two callers at once must not run apt together.
  (
    flock 8
    if ! command -v debootstrap >/dev/null; then
      echo "installing debootstrap from Debian's packages"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
  ) 8>"$cache_root/.apt.lock"
fi

# Unmounts whatever is still mounted under a root (debootstrap mounts /proc and /sys in it;
# a killed run leaves them), then deletes it without crossing into another file system.
remove_root() {
  local root=$1 mnt
  [[ -n $root && -d $root ]] || return 0
  while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET | grep -F "$root/" | sort -r)
  rm -rf --one-file-system "$root" "$root.log"
}

# Runs in a subshell of its own (the builds run at the same time): its own lock, temp root
# and EXIT trap.
build() {
  # $4: packages installed afterwards by apt inside the new root (npm's many node-*
  # dependencies do not configure in debootstrap's own order).
  local image=$1 key=$2 packages=$3 env=$4 later=${5:-}
  local cache="$cache_root/$key"
  mkdir -p "$cache"
  # One build of an image at a time, machine-wide; a caller that waited for another's build
  # keeps the image that build made (unless --force: then it was asked to build again).
  exec 9>"$cache_root/$key.lock"
  if ! flock -n 9; then
    echo "waiting for another build of $image"
    flock 9
    if exists "$image"; then
      echo "$image was built by another run"
      return
    fi
  fi
  if [[ $force -eq 0 ]] && exists "$image"; then
    echo "$image already exists (use --force to rebuild)"
    return
  fi
  # Not local: the EXIT trap runs after the function has returned.
  local started
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/stratus-$key-root.XXXXXX")
  trap 'remove_root "$rootfs"' EXIT
  started=$(date +%s)
  echo "building $image from Debian $suite: $packages${later:+ then $later}"
  if ! debootstrap --variant=minbase --cache-dir="$cache" --include="$packages" \
      "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    echo "debootstrap failed for $image; its log:" >&2
    tail -20 "$rootfs.log" >&2
    exit 1
  fi
  if [[ -n $later ]]; then
    # apt inside the root takes what the cache has (it checks each file against the index)
    # and the cache gets back what it downloaded.
    find "$cache" -maxdepth 1 -name '*.deb' -exec cp -t "$rootfs/var/cache/apt/archives/" {} +
    if ! chroot "$rootfs" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $later" \
        >"$rootfs.log" 2>&1; then
      echo "installing $later failed for $image; its log:" >&2
      tail -20 "$rootfs.log" >&2
      exit 1
    fi
    find "$rootfs/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -n -t "$cache/" {} +
  fi
  # The cache keeps exactly the packages this image has now: older versions go.
  chroot "$rootfs" dpkg-query -W -f '${Package}_${Version}_${Architecture}.deb\n' \
    | sed 's/:/%3a/g' | LC_ALL=C sort >"$rootfs.installed"
  find "$cache" -maxdepth 1 -name '*.deb' -printf '%f\n' | LC_ALL=C sort \
    | LC_ALL=C comm -23 - "$rootfs.installed" | sed "s|^|$cache/|" | xargs -r rm -f
  rm -f "$rootfs.installed"
  # The host's own certificate authorities (a TLS-inspecting egress proxy's, a company's),
  # so pip and npm inside builds trust what the host trusts.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  # What a container never needs: package caches and lists, docs, manuals, translations,
  # debconf's backups.
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/* "$rootfs"/var/cache/debconf/*-old
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} +
  mkdir -p "$rootfs/app"
  tar --numeric-owner -C "$rootfs" -c . \
    | docker import -c "ENV $env" -c 'WORKDIR /app' -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
  echo "built $image in $(( $(date +%s) - started )) s ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
}

path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
pids=()
for runtime in "${wanted[@]}"; do
  case "$runtime" in
    python) (build "${image[python]}" python python3,python3-pip,python3-venv,ca-certificates "$path LANG=C.UTF-8") & ;;
    node) (build "${image[node]}" node nodejs,ca-certificates "$path LANG=C.UTF-8" npm) & ;;
  esac
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
exit $failed
