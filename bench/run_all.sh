#!/usr/bin/env bash
# Run every benchmark once with its defaults; each prints its own table and
# compares against its baseline in the same run (figures vary between runs
# on shared machines: compare the ratios).  Extra arguments are not passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
bash scripts/setup.sh >/dev/null
# The load generator (wrk) and a fast HTTP/2 responder to show the client's
# own ceiling (nginx); Debian packages, installed when run as root.
# h2load (nghttp2-client) measures the simulator's own ceiling for bench_gorush.
if [ "$(id -u)" = 0 ] && ! { command -v wrk && command -v nginx && command -v h2load; } >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light wrk nghttp2-client >/dev/null \
        || echo "run_all: could not install nginx-light, wrk and nghttp2-client; those parts are skipped" >&2
fi
benches=(bench_apns bench_http_push bench_fcm bench_observe bench_store)
# Side by side with gorush: needs root (port 443 on a loopback address, a mount namespace) and Go.
if [ "$(id -u)" = 0 ]; then benches+=(bench_gorush); fi
for bench in "${benches[@]}"; do
    echo "=== $bench ==="
    timeout 900 "$PY" "bench/$bench.py"
    echo
done
