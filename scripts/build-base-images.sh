#!/usr/bin/env bash
# Builds the base images of the source builders (issue 11) from Debian's packages, since no
# image registry can be reached here: a minimal Debian root (debootstrap --variant=minbase)
# with the runtime installed, docs, manuals, locales and package caches removed, imported
# as an image. The host's extra certificate authorities (/usr/local/share/ca-certificates)
# are trusted inside, so builds reach package indexes through the same proxies the host does.
#
#   stratus/python:3.11   Debian bookworm's python3 (3.11) with pip and venv
#   stratus/node:18       Debian bookworm's nodejs (18) with npm
#
# Usage: scripts/build-base-images.sh [--force] [python|node ...]
# Idempotent: an image that exists is kept unless --force. Needs root (debootstrap) and
# Debian's package archive; about 2-3 minutes an image.
set -euo pipefail

mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
force=0
wanted=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    python|node) wanted+=("$arg") ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --force, python or node)" >&2; exit 2 ;;
  esac
done
[[ ${#wanted[@]} -gt 0 ]] || wanted=(python node)

command -v docker >/dev/null || { echo "docker not found: install Docker Engine first" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  echo "installing debootstrap from Debian's packages"
  apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
fi

build() {
  # $4: packages installed afterwards by apt inside the new root (npm's many node-*
  # dependencies do not configure in debootstrap's own order).
  local image=$1 packages=$2 env=$3 later=${4:-}
  if [[ $force -eq 0 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image already exists (use --force to rebuild)"
    return
  fi
  local rootfs started
  rootfs=$(mktemp -d)
  started=$(date +%s)
  echo "building $image from Debian $suite: $packages"
  if ! debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
      >"$rootfs.log" 2>&1; then
    echo "debootstrap failed for $image; its log:" >&2
    tail -20 "$rootfs.log" >&2
    rm -rf "$rootfs" "$rootfs.log"
    exit 1
  fi
  if [[ -n $later ]]; then
    if ! chroot "$rootfs" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $later" \
        >"$rootfs.log" 2>&1; then
      echo "installing $later failed for $image; its log:" >&2
      tail -20 "$rootfs.log" >&2
      rm -rf "$rootfs" "$rootfs.log"
      exit 1
    fi
  fi
  # The host's own certificate authorities (a TLS-inspecting egress proxy's, a company's),
  # so pip and npm inside builds trust what the host trusts.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  # What a container never needs: package caches and lists, docs, manuals, translations.
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} +
  mkdir -p "$rootfs/app"
  tar --numeric-owner -C "$rootfs" -c . \
    | docker import -c "ENV $env" -c 'WORKDIR /app' -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  echo "built $image in $(( $(date +%s) - started )) s ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
}

path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for runtime in "${wanted[@]}"; do
  case "$runtime" in
    python) build stratus/python:3.11 python3,python3-pip,python3-venv,ca-certificates "$path LANG=C.UTF-8" ;;
    node) build stratus/node:18 nodejs,ca-certificates "$path LANG=C.UTF-8" npm ;;
  esac
done
