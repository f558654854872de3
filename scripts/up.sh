#!/usr/bin/env bash
# The quick start: installs what is missing, builds, starts 3 agents on 127.0.0.2-4,
# deploys examples/hello and prints where it answers. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
exec ./target/release/testbed up "$@"
