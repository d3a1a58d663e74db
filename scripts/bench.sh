#!/usr/bin/env bash
# The benchmark table (README "Benchmarks"): builds in release mode, runs
# the Rust benches (append, COG ingest), then benches/suite.py, which starts
# the server and the anchors (pyarrow in-memory Flight server, pyarrow DoPut
# sink, gdalwarp) on loopback and prints one table: ours, anchor, ratio, goal.
# Takes about 5 minutes after the build. SIZE=5490 makes row 3 smaller.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Anchors of rows 1c, 8 and 9 (not needed by the tests).
command -v iperf3 >/dev/null || $([ "$(id -u)" -eq 0 ] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3
.venv/bin/python -c "import odc.stac, pystac, numexpr" 2>/dev/null || .venv/bin/python -m pip install -q "odc-stac>=0.3" "pystac>=1.8" "numexpr>=2.8"
cargo build --release --bin pixelquery
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export PIXELQUERY_BENCH_DIR="${PIXELQUERY_BENCH_DIR:-$out}"
cargo bench --bench append | tee "$out/append.txt"
PIXELQUERY_KEEP_COGS="$out/cogs" cargo bench --bench cog_ingest | tee "$out/cog.txt"
# Row 6's anchor: the earlier PixelQuery (PyPI pixelquery==0.1.0, its own
# venv) ingesting the same COGs. Its install needs PyPI; without it the row
# keeps the published figure.
.venv/bin/python benches/earlier_pixelquery.py --cogs "$out/cogs" --glob 'scene_*.tif' | tee "$out/earlier.txt" || echo "earlier PixelQuery not measured" | tee "$out/earlier.txt"
cargo bench --bench warp_kernel | tee "$out/kernel.txt"
cargo bench --bench pixel_steps | tee "$out/steps.txt"
echo "== $(date -u +%Y-%m-%d) $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(. /etc/os-release && echo "$PRETTY_NAME")"
.venv/bin/python benches/suite.py --binary target/release/pixelquery --size "${SIZE:-10980}" \
  --results "$out/append.txt" "$out/cog.txt" "$out/earlier.txt" "$out/kernel.txt" "$out/steps.txt" --out "${BENCH_TABLE:-benches/latest.md}"
