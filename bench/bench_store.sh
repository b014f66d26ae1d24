#!/usr/bin/env bash
# Token store benchmark (lookups/s and v2 fan-out pushes/s, SQLite and Cassandra).
# Loopback only; starts (and stops) its own simulator, sidecars and, unless
# PUSHSIDECAR_CASSANDRA_HOST is set, a Cassandra node.  Options: see
# .venv/bin/python bench/bench_store.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/bench_store.py "$@"
