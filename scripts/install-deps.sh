#!/usr/bin/env bash
# Installs what building and testing Stratus needs beyond Rust and Docker, from Debian's
# packages, only when missing: cmake (pingora builds zlib-ng with it), curl, python3, nft
# (the chaos suite's partitions, testbed/src/chaos/partition.rs), Docker Compose (its
# compose variant, testbed/tests/chaos_compose.rs; Debian's docker-compose when neither the
# v2 plugin nor v1 is present) and docker-registry (the CNCF distribution registry that
# scripts/start-registry.sh runs for the image pull tests).
set -euo pipefail

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v nft >/dev/null || missing+=(nftables)
command -v docker-registry >/dev/null || missing+=(docker-registry)
if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1; then
  command -v docker-compose >/dev/null || missing+=(docker-compose)
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]}) or run this as root" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)" >&2; exit 1; }
command -v docker >/dev/null || { echo "docker not found: install Docker Engine" >&2; exit 1; }
