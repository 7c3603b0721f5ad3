#!/usr/bin/env bash
# User-space instructions per `GET /api/v1/operations/{id}`, counted by valgrind (callgrind), for
# bare axum (the ops_api bench's reference handler, answering the service's bytes) and for the
# service not tracing, tracing with nothing sampled, and tracing with 1 % sampled. Unlike
# requests per second, these counts do not drift with the machine's speed: the same binary and
# load give the same figures to within a percent.
#
# Run: bash benches/instructions.sh (needs valgrind and wrk; builds the release binaries first).
# Each server runs under callgrind with instrumentation off until it is warm, then counts
# through SECONDS (default 20) of wrk (1 thread, 8 connections).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_TARGET:-20}
bench=$(cargo bench --bench ops_api --no-run 2>&1 | sed -n 's/.*Executable benches\/ops_api.rs (\(.*\))/\1/p')
target_dir=$(dirname "$(dirname "$bench")")
service="$target_dir/ktrdr-ops"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# A collector that takes every OTLP/HTTP export (its answer is all the exporter needs).
python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' 4399 &

# count NAME URL COMMAND...: starts COMMAND under callgrind, warms it, counts, prints per request.
count() {
  local name=$1 url=$2; shift 2
  local file="$work/${name//[^a-z0-9]/_}" # valgrind reads % in a file name as a pattern
  (cd "$work" && exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file.out" "$@" \
    > "$file.log" 2>&1) &
  local pid=$!
  for _ in $(seq 1 120); do grep -q "listening on" "$file.log" && break; sleep 1; done
  local base
  base=$(grep -o "listening on http://[0-9.:]*" "$file.log" | head -1 | cut -d' ' -f3)
  if [[ $url == dummy ]]; then
    url="$base/api/v1/operations/$(curl -s -X POST "$base/api/v1/dummy/start" -H 'content-type: application/json' \
      -d '{"iterations":1000000,"interval_ms":100}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["operation_id"])')"
    curl -s "$url" > "$work/record.json"
  else
    url="$base$url"
  fi
  wrk -t1 -c8 -d3s "$url" > /dev/null
  callgrind_control -i on "$pid" > /dev/null
  local requests
  requests=$(wrk -t1 -c8 -d"${seconds}s" "$url" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" > /dev/null
  sleep 1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local total
  total=$(callgrind_annotate "$file.out".* 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  printf '%-34s %8d instructions per request (%d requests)\n' "$name" $((total / requests)) "$requests"
}

service_args=(serve --listen 127.0.0.1:0)
count "service, not tracing" dummy "$service" "${service_args[@]}" --database-url "sqlite://$work/plain.db"
(export BENCH_BARE_AXUM_BODY; BENCH_BARE_AXUM_BODY="$(cat "$work/record.json")"; count "bare axum, the same bytes" /ops/x "$bench")
export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4399 OTEL_EXPORTER_OTLP_PROTOCOL=http/json \
  OTEL_TRACES_SAMPLER=parentbased_traceidratio
(export OTEL_TRACES_SAMPLER_ARG=0
  count "service, tracing, nothing sampled" dummy "$service" "${service_args[@]}" --database-url "sqlite://$work/none.db")
(export OTEL_TRACES_SAMPLER_ARG=0.01
  count "service, tracing, 1 % sampled" dummy "$service" "${service_args[@]}" --database-url "sqlite://$work/one.db")
