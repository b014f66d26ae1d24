#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, a real Apache Cassandra
# (from Maven Central, started here on free loopback ports), a real Kamailio
# and sipp (Debian packages), then pytest.  Everything it starts it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export PUSHSIDECAR_REQUIRE_KAMAILIO=1
export PUSHSIDECAR_REQUIRE_SYSTEMD=1
export PUSHSIDECAR_REQUIRE_CHROMIUM=1
export PUSHSIDECAR_CASSANDRA=1
bash .ci/cassandra.sh install

.venv/bin/python -m pytest -rs -q -p no:cacheprovider "$@"
