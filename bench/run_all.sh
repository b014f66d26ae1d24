#!/usr/bin/env bash
# Run every benchmark once with its defaults; each prints its own table and
# compares against its baseline in the same run (figures vary between runs
# on shared machines: compare the ratios).  Extra arguments are not passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for bench in bench_apns bench_http_push bench_fcm bench_observe; do
    echo "=== $bench ==="
    timeout 900 "$PY" "bench/$bench.py"
    echo
done
