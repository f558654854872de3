#!/usr/bin/env bash
# Makes sure s3s-fs (a real S3 server over plain files, from crates.io) is installed and
# prints its path: the one on PATH, else ~/.cargo/bin/s3s-fs, installed there with
# `cargo install` on first use (several minutes on 2 cores). Shared by scripts/start-s3.sh
# (the tests' server on the host) and scripts/build-s3-image.sh (the compose cluster's).
# Concurrent calls are serialised with a lock, so it is installed once.
set -euo pipefail

# The newest s3s-fs that builds with our rustc 1.95: 0.15 and later need Rust 1.96.
S3S_FS_VERSION=0.14.1

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
find_bin() {
  command -v s3s-fs || { [[ -x $cargo_bin/s3s-fs ]] && echo "$cargo_bin/s3s-fs"; }
}

if bin=$(find_bin); then
  echo "$bin"
  exit 0
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust to build s3s-fs" >&2; exit 1; }

mkdir -p "$cargo_bin"
exec 9>"$cargo_bin/.s3s-fs-install.lock"
flock 9
# Another call may have installed it while this one waited.
if bin=$(find_bin); then
  echo "$bin"
  exit 0
fi
echo "installing s3s-fs $S3S_FS_VERSION from crates.io (first use only; takes minutes)..." >&2
# A target folder of its own: CARGO_TARGET_DIR may point at a build that a running
# `cargo test` holds locked, and the install would wait for it forever.
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
started=$SECONDS
cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked \
  --target-dir "$build" >&2
echo "installed s3s-fs in $((SECONDS - started)) s" >&2
find_bin || { echo "cargo install s3s-fs ran, but no s3s-fs is on PATH or in $cargo_bin" >&2; exit 1; }
