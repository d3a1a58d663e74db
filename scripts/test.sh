#!/usr/bin/env bash
# Runs every test: set-up, rustfmt and clippy, the Rust unit and integration tests (real servers
# on port 0), then the pytest suites (plain pyarrow, the pixelquery_flight
# package, the executed example notebook) against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Formatting and lints first: they fail in seconds, the tests take minutes.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# cargo test also builds target/debug/pixelquery (the integration tests run it).
cargo test --workspace
PIXELQUERY_BIN="$PWD/target/debug/pixelquery" .venv/bin/python -m pytest -q tests/python clients/python/tests
