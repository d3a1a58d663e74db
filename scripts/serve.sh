#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh), builds in release mode and serves
# ./warehouse on 127.0.0.1:8815. Extra arguments go to `pixelquery serve`
# (see `pixelquery serve --help`; every flag also has an env var).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --release --bin pixelquery -- serve "$@"
