#!/usr/bin/env bash
# Runs every test: set-up, the Rust unit and integration tests (real servers
# on port 0), then the pytest suites (plain pyarrow, the pixelquery_flight
# package, the executed example notebook) against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace
cargo build --bin pixelquery
PIXELQUERY_BIN="$PWD/target/debug/pixelquery" .venv/bin/python -m pytest -q tests/python clients/python/tests
