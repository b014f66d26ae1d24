#!/usr/bin/env bash
# Set-up on a fresh Debian 12 machine: system packages (when root), a virtual
# environment in .venv with the sidecar and its test tools.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Kamailio + sipp (proxy tests), Debian's zmq/msgpack (the proxy's embedded
# Python), systemd (unit checks), Java 17 + Maven (.ci/cassandra.sh fetches and
# runs Apache Cassandra), Chromium (the /docs page tested in a real browser).
DEBIAN_PACKAGES=(kamailio kamailio-python3-modules kamailio-extra-modules sip-tester
                 python3-zmq python3-msgpack systemd
                 openjdk-17-jre-headless maven chromium)

# A command already on PATH counts (Maven or Chromium installed another way).
declare -A PROVIDES=([maven]=mvn [chromium]=chromium)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    if [ -n "${PROVIDES[$pkg]:-}" ] && command -v "${PROVIDES[$pkg]}" >/dev/null; then
        continue
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages (run as root to install): ${missing[*]}" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test]'
echo "setup: done (.venv/bin/pushsidecar)"
