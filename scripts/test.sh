#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, a real Apache Cassandra
# (from Maven Central, started here on free loopback ports), a real Kamailio
# and sipp (Debian packages), real OpenSIPS 3.4 and 3.6 (built from the
# vendored sources), then pytest.  Before all that: ruff and mypy (strict on
# sidecar/ except the simulator; settings in pyproject.toml).  Everything it starts it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Lint and types first: seconds, and a failure here needs no servers to explain.
.venv/bin/ruff check .
.venv/bin/mypy

# A real OpenSIPS of each supported LTS, built from ../shared/vendor (cached).
# (Assigned before export: a failed build then stops the run; `export X="$(...)"` would hide it.)
PUSHSIDECAR_OPENSIPS_3_4_18="$(bash scripts/build_opensips.sh 3.4.18 | tail -n 1)"
PUSHSIDECAR_OPENSIPS_3_6_8="$(bash scripts/build_opensips.sh 3.6.8 | tail -n 1)"
export PUSHSIDECAR_OPENSIPS_3_4_18 PUSHSIDECAR_OPENSIPS_3_6_8
export PUSHSIDECAR_REQUIRE_OPENSIPS=1
export PUSHSIDECAR_REQUIRE_KAMAILIO=1
export PUSHSIDECAR_REQUIRE_SYSTEMD=1
export PUSHSIDECAR_REQUIRE_CHROMIUM=1
export PUSHSIDECAR_CASSANDRA=1
bash .ci/cassandra.sh install

.venv/bin/python -m pytest -rs -q -p no:cacheprovider "$@"
