#!/usr/bin/env bash
# Installs what building and testing Stratus needs beyond Rust and Docker, from Debian's
# packages, only when missing: cmake (pingora builds zlib-ng with it), curl, python3, nft
# (the chaos suite's partitions, testbed/src/chaos/partition.rs), Docker Compose (its
# compose variant, testbed/tests/chaos_compose.rs; Debian's docker-compose when neither the
# v2 plugin nor v1 is present), docker-registry (the CNCF distribution registry that
# scripts/start-registry.sh runs for the image pull tests), runsc (gVisor, which the
# gVisor tenant test, node/tests/gvisor.rs, adds to a sandbox dockerd with --platform=ptrace)
# chromium with chromium-driver and firefox-esr (the dashboard's browser tests,
# node/tests/dashboard.rs, drive both headless; Firefox through geckodriver, which Debian
# does not package: it is built from crates.io, about 2 minutes), dig from bind9-dnsutils
# (the DNS tests, node/tests/dns.rs, ask the agents' DNS server with it), and zsh and fish
# (node/tests/cli_comforts.rs has each shell parse the completion script `stratus
# completions` writes for it).
set -euo pipefail

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v nft >/dev/null || missing+=(nftables)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v runsc >/dev/null || missing+=(runsc)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v firefox-esr >/dev/null || command -v firefox >/dev/null || missing+=(firefox-esr)
command -v zsh >/dev/null || missing+=(zsh)
command -v fish >/dev/null || missing+=(fish)
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
if ! command -v geckodriver >/dev/null; then
  echo "installing geckodriver (cargo install, from crates.io)"
  # A debug build: it compiles in about half the time, and the test only drives one page.
  cargo install geckodriver --locked --debug --quiet
fi
