#!/bin/sh
# Runs this crate's own unit tests. It is not a workspace member, so `cargo test -p
# pingora-proxy` cannot build its dev-dependencies: test a copy as a crate of its own (cargo
# resolves its dependencies, pingora-cache's optional ones included, into the copy's lock).
set -e
here=$(cd "$(dirname "$0")" && pwd)
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
cp -r "$here/Cargo.toml" "$here/src" "$copy/"
cp "$here/../../Cargo.lock" "$copy/"
# The vendored pingora-core and pingora-http, as the workspace uses them.
printf '\n[patch.crates-io]\npingora-core = { path = "%s" }\npingora-http = { path = "%s" }\n' \
  "$here/../pingora-core" "$here/../pingora-http" >>"$copy/Cargo.toml"
cd "$copy"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../../target/vendor-pingora-proxy}" cargo test --lib "$@"
