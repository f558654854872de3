#!/bin/sh
# Runs this crate's own unit tests. It is not a workspace member, so `cargo test -p
# pingora-core` cannot build its dev-dependencies: test a copy as a crate of its own (cargo
# resolves its dev-dependencies into the copy's lock).
set -e
here=$(cd "$(dirname "$0")" && pwd)
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
cp -r "$here/Cargo.toml" "$here/src" "$copy/"
cp "$here/../../Cargo.lock" "$copy/"
# The vendored pingora-http, as the workspace uses it.
printf '\n[patch.crates-io]\npingora-http = { path = "%s" }\n' "$here/../pingora-http" >>"$copy/Cargo.toml"
cd "$copy"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../../target/vendor-pingora-core}" cargo test --lib "$@"
