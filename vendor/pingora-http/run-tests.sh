#!/bin/sh
# Runs this crate's own unit tests. It is not a workspace member, so `cargo test -p
# pingora-http` cannot build its dev-dependencies: test a copy as a crate of its own (cargo
# resolves its dependencies into the copy's lock).
set -e
here=$(cd "$(dirname "$0")" && pwd)
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
cp -r "$here/Cargo.toml" "$here/src" "$copy/"
cp "$here/../../Cargo.lock" "$copy/"
cd "$copy"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../../target/vendor-pingora-http}" cargo test --lib "$@"
