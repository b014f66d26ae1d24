#!/usr/bin/env bash
# Build OpenSIPS from the vendored source tarball, with only the modules the
# example configuration (opensips_scripts/opensips.cfg) loads, plus python.
# The install is cached under ~/.cache/pushsidecar/opensips-<version>-<hash>,
# so a second run costs nothing.  Prints the install prefix on its last line.
#
#   bash scripts/build_opensips.sh 3.4.18
#
# Needs (installed by scripts/setup.sh when root): gcc make bison flex
# pkg-config libncurses-dev python3-dev, and Debian's /usr/bin/python3 (the
# module embeds the Python it is built with; the script imports Debian's zmq).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: build_opensips.sh VERSION (3.4.18 or 3.6.8)}
tarball=${OPENSIPS_TARBALL:-../shared/vendor/opensips-$version.tar.gz}
if [ ! -f "$tarball" ]; then
    # A checkout outside the project folder has no ../shared: a build cached
    # from the same version's tarball still serves; with none, stop here.
    cached=$(ls -dt "${XDG_CACHE_HOME:-$HOME/.cache}"/pushsidecar/opensips-"$version"-*/sbin/opensips 2>/dev/null | head -n 1 || true)
    if [ -z "$cached" ]; then
        echo "build_opensips: $tarball not found, and no cached OpenSIPS $version build" >&2
        exit 1
    fi
    echo "build_opensips: $tarball not found; using the cached ${cached%/sbin/opensips}" >&2
    echo "${cached%/sbin/opensips}"
    exit 0
fi
MODULES="signaling sl tm rr maxfwd sipmsgops usrloc registrar event_routing cachedb_local cfgutils textops python"
case "$version" in
    3.4.*) MODULES="$MODULES event_route" ;;  # in the core from 3.5 on
esac
key=$( (echo "$MODULES"; sha256sum "$tarball" | cut -c1-16; sha256sum "$0" | cut -c1-16) | sha256sum | cut -c1-12)
prefix=${XDG_CACHE_HOME:-$HOME/.cache}/pushsidecar/opensips-$version-$key
if [ -x "$prefix/sbin/opensips" ] && [ -f "$prefix/lib64/opensips/modules/python.so" ]; then
    echo "build_opensips: cached $prefix" >&2
    echo "$prefix"
    exit 0
fi
# Debian build packages (installed here when root; listed otherwise).
BUILD_PACKAGES=(gcc make bison flex pkg-config libncurses-dev libpython3-dev python3-dev python3-zmq python3-msgpack)
missing=()
for pkg in "${BUILD_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "build_opensips: missing Debian packages (run as root to install): ${missing[*]}" >&2
        exit 1
    fi
    echo "build_opensips: installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
mods=""
for m in $MODULES; do mods="$mods modules/$m"; done
echo "build_opensips: building OpenSIPS $version into $prefix (about 90 s on 2 cores)" >&2
start=$(date +%s)
(
    cd "$work"
    # PYTHON must be Debian's: a venv's or pyenv's python3 would be embedded instead.
    make_args=(PYTHON=/usr/bin/python3 "prefix=$prefix.tmp" FASTER=1 "-j$(nproc)"
               include_modules=python "modules=$mods")
    make "${make_args[@]}" app modules >"$work/build.log" 2>&1 &&
        make "${make_args[@]}" install >>"$work/build.log" 2>&1
) || { tail -40 "$work/build.log" >&2; echo "build_opensips: build failed" >&2; exit 1; }
rm -rf "$prefix"
# The install embeds its prefix in paths it reads at run time only through
# -f/mpath, which the tests give explicitly: renaming the folder is safe.
mv "$prefix.tmp" "$prefix"
echo "build_opensips: built in $(( $(date +%s) - start )) s" >&2
echo "$prefix"
