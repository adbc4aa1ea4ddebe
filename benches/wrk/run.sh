#!/usr/bin/env bash
# Accept rate of a release server: wrk against GET /healthz and POST /v1/ai/async of the
# same server in the same run. Usage: benches/wrk/run.sh [connections] [seconds]
# Env: EDDY_MSG_BYTES=300000 sends messages of that size; EDDY_BIN=path runs another
# binary (an older build, for a before/after figure) instead of target/release/eddy.
set -euo pipefail
cd "$(dirname "$0")/../.."
conns=${1:-64}
secs=${2:-10}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
cargo build --release --quiet
data=$(mktemp -d)
export EDDY_KEY="mr_live_$(head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)"
out=$(mktemp)
# One client address opens every connection: lift the per-address cap (1000).
"${EDDY_BIN:-./target/release/eddy}" serve --listen 127.0.0.1:0 --data "$data" --api-key "$EDDY_KEY" \
  --max-connections-per-ip 65536 >"$out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$data" "$out"' EXIT
for _ in $(seq 50); do grep -q listening "$out" && break; sleep 0.1; done
base=$(sed -n 's/^listening on //p' "$out")
curl -sf -X POST "$base/console/workflow" -H "Authorization: Bearer $EDDY_KEY" \
  -d '{"name":"bench","provider":"testing","model":"test-mode","mode":"testing"}' >/dev/null
echo "healthz, $conns connections, ${secs}s:"
wrk -t2 -c"$conns" -d"${secs}s" --latency "$base/healthz" | grep -E 'Requests/sec|50%|99%'
echo "POST /v1/ai/async (durable: flush + fdatasync per batch), $conns connections, ${secs}s:"
wrk -t2 -c"$conns" -d"${secs}s" --latency -s benches/wrk/async.lua "$base/v1/ai/async" | grep -E 'Requests/sec|50%|99%|wrk-summary|Non-2xx'
echo "store after the run: $(du -sh "$data" | cut -f1)"
