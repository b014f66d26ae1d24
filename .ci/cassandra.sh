#!/usr/bin/env bash
# Run a real single-node Apache Cassandra for the tests, from Maven Central jars.
#
#   .ci/cassandra.sh install      resolve cassandra-all + dependencies (cached)
#   .ci/cassandra.sh start DIR    start a node with data under DIR on free ports;
#                                 prints the native (CQL) port, writes DIR/native_port
#   .ci/cassandra.sh stop DIR     stop the node started in DIR
#
# Cassandra has no Debian package and its download site is out of reach, but
# the server itself is on Maven Central as org.apache.cassandra:cassandra-all;
# we start its CassandraDaemon with plain java (what bin/cassandra would do).
#
# Environment: CASSANDRA_VERSION (default below), PUSHSIDECAR_CASSANDRA_CACHE
# (default ~/.cache/pushsidecar-cassandra), CASSANDRA_START_TIMEOUT (seconds,
# default 180), JAVA (default: java 17 if found, else java on PATH).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${CASSANDRA_VERSION:-5.0.4}"
CACHE="${PUSHSIDECAR_CASSANDRA_CACHE:-$HOME/.cache/pushsidecar-cassandra}"
LIB="$CACHE/lib-$VERSION"
TIMEOUT="${CASSANDRA_START_TIMEOUT:-180}"

if [[ -z "${JAVA:-}" ]]; then
    if [[ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]]; then
        JAVA=/usr/lib/jvm/java-17-openjdk-amd64/bin/java
    else
        JAVA=java
    fi
fi

die() { echo "cassandra.sh: $*" >&2; exit 1; }

cmd_install() {
    if [[ -f "$LIB/.complete" ]]; then
        echo "cassandra $VERSION already installed in $LIB"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    local started=$SECONDS tmp="$LIB.partial"
    rm -rf "$tmp"
    echo "resolving org.apache.cassandra:cassandra-all:$VERSION into $LIB ..."
    mvn -q -B -f "$HERE/cassandra/pom.xml" \
        -Dcassandra.version="$VERSION" \
        dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" \
        || die "maven could not resolve cassandra-all $VERSION"
    ls "$tmp"/cassandra-all-*.jar >/dev/null 2>&1 || die "no cassandra-all jar in $tmp"
    touch "$tmp/.complete"
    rm -rf "$LIB"
    mv "$tmp" "$LIB"
    echo "installed $(ls "$LIB" | wc -l) jars in $((SECONDS - started)) s"
}

# Options from Cassandra's conf/jvm17-server.options that the daemon needs to start.
java17_options() {
    local e
    for e in java.base/jdk.internal.misc java.management.rmi/com.sun.jmx.remote.internal.rmi \
             java.rmi/sun.rmi.registry java.rmi/sun.rmi.server java.sql/java.sql \
             java.base/java.lang.ref jdk.unsupported/sun.misc \
             jdk.compiler/com.sun.tools.javac.file jdk.attach/sun.tools.attach; do
        echo "--add-exports=$e=ALL-UNNAMED"
    done
    for e in java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref \
             java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module \
             java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal \
             java.base/sun.nio.ch java.base/java.io java.base/java.lang.reflect \
             jdk.compiler/com.sun.tools.javac java.base/java.lang java.base/java.util \
             java.base/java.nio java.base/java.util.concurrent java.base/java.util.concurrent.atomic; do
        echo "--add-opens=$e=ALL-UNNAMED"
    done
    echo "-Djdk.attach.allowAttachSelf=true"
    echo "-Dio.netty.tryReflectionSetAccessible=true"
}

# Two distinct free TCP ports on 127.0.0.1 (bind port 0, read, release).
free_ports() {
    python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

port_open() {
    python3 - "$1" <<'EOF'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
EOF
}

cmd_start() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: $0 start DIR"
    [[ -f "$LIB/.complete" ]] || cmd_install
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [[ -f "$dir/cassandra.pid" ]] && kill -0 "$(cat "$dir/cassandra.pid")" 2>/dev/null; then
        die "a node already runs from $dir (pid $(cat "$dir/cassandra.pid"))"
    fi
    mkdir -p "$dir"/{data,commitlog,hints,saved_caches,cdc_raw,logs}
    local ports native storage
    ports="$(free_ports)"
    native="${ports% *}"
    storage="${ports#* }"
    sed -e "s|@DIR@|$dir|g" -e "s|@NATIVE_PORT@|$native|g" -e "s|@STORAGE_PORT@|$storage|g" \
        "$HERE/cassandra/cassandra.yaml.in" > "$dir/cassandra.yaml"

    local jamm
    jamm="$(ls "$LIB"/jamm-*.jar 2>/dev/null | head -n1 || true)"
    local -a opts
    mapfile -t opts < <(java17_options)
    [[ -n "$jamm" ]] && opts+=("-javaagent:$jamm")
    opts+=(
        -Xms512m -Xmx1g -Xss512k -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
        -Dlogback.configurationFile="$HERE/cassandra/logback.xml"
        -Dcassandra.config="file://$dir/cassandra.yaml"
        -Dcassandra-foreground=yes
        -Dcassandra.storagedir="$dir"
        -Dcassandra.logdir="$dir/logs"
        # One node, nobody to gossip with: skip the waits meant for real clusters.
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -Dcassandra.ring_delay_ms=1000
        -Dcassandra.superuser_setup_delay_ms=0
        -Dcassandra.available_processors=2
    )
    local started=$SECONDS
    # setsid: the node outlives this script and gets its own process group.
    setsid "$JAVA" "${opts[@]}" -cp "$LIB/*" org.apache.cassandra.service.CassandraDaemon \
        > "$dir/logs/stdout.log" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid" > "$dir/cassandra.pid"

    while ! port_open "$native"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "cassandra.sh: the node exited during start-up; log tail:" >&2
            tail -n 60 "$dir/logs/stdout.log" >&2
            exit 1
        fi
        if (( SECONDS - started > TIMEOUT )); then
            echo "cassandra.sh: native port $native not open after ${TIMEOUT}s; log tail:" >&2
            tail -n 60 "$dir/logs/stdout.log" >&2
            cmd_stop "$dir" >&2 || true
            exit 1
        fi
        sleep 1
    done
    echo "$native" > "$dir/native_port"
    echo "cassandra $VERSION up after $((SECONDS - started)) s (pid $pid)" >&2
    echo "$native"
}

cmd_stop() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: $0 stop DIR"
    local pidfile="$dir/cassandra.pid"
    [[ -f "$pidfile" ]] || { echo "no node in $dir"; return 0; }
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        local i
        for i in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "node $pid still alive after 30 s: SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
    echo "stopped node $pid"
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
