#!/usr/bin/env bash
# Start, stop and inspect the services shardworld's tests and multi-process worlds use:
# a single-node Kafka broker (KRaft mode, assembled from Maven Central jars) and Redis.
#
#   scripts/services.sh start  [kafka] [redis]     background, wait until ready (default: both)
#   scripts/services.sh stop   [kafka] [redis]     stop what our pid files name, wait for exit
#   scripts/services.sh status [kafka] [redis]     exit 0 if all named are running
#   scripts/services.sh with   [kafka] [redis] -- CMD ...
#                                                  start, export SHARDWORLD_KAFKA_URL and
#                                                  SHARDWORLD_REDIS_URL, run CMD, always stop;
#                                                  exits with CMD's status
#   scripts/services.sh foreground kafka           a broker in the foreground (Ctrl-C stops it)
#   scripts/services.sh kafka-libs                 fetch the broker jars into .cache/kafka/libs
#
# Environment: SHARDWORLD_KAFKA_PORT (19092), SHARDWORLD_KAFKA_CONTROLLER_PORT (port + 1),
# SHARDWORLD_REDIS_PORT (16379), SHARDWORLD_RUN_DIR (.run: pid files, logs, Kafka data),
# SHARDWORLD_KAFKA_HEAP (512m), SHARDWORLD_KAFKA_START_TIMEOUT (90 seconds).
# Every broker start formats fresh, empty storage: these are test and development services.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

KAFKA_PORT="${SHARDWORLD_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${SHARDWORLD_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
REDIS_PORT="${SHARDWORLD_REDIS_PORT:-16379}"
RUN_DIR="${SHARDWORLD_RUN_DIR:-.run}"
[[ "$RUN_DIR" == /* ]] || RUN_DIR="$ROOT/$RUN_DIR"
KAFKA_HEAP="${SHARDWORLD_KAFKA_HEAP:-512m}"
KAFKA_START_TIMEOUT="${SHARDWORLD_KAFKA_START_TIMEOUT:-90}"
KAFKA_LIBS="$ROOT/.cache/kafka/libs"
KAFKA_POM="$ROOT/tools/kafka/pom.xml"
KAFKA_DIR="$RUN_DIR/kafka"
KAFKA_PID="$RUN_DIR/kafka.pid"
REDIS_DIR="$RUN_DIR/redis"
REDIS_PID="$RUN_DIR/redis.pid"

say() { echo "services: $*" >&2; }
die() { echo "services: error: $*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------------------------

apt_install() {  # apt_install PACKAGE...: only as root on a Debian-like system, saying so
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        return 1
    fi
    say "installing $* with apt-get (needed by shardworld's services)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

need() {  # need COMMAND PACKAGE
    command -v "$1" >/dev/null && return 0
    apt_install "$2" || true
    command -v "$1" >/dev/null || die "'$1' not found: install the Debian package '$2' (apt-get install $2)"
}

need_java() {
    need java openjdk-17-jre-headless
    local version
    version="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
    if [[ -z "$version" || "$version" -lt 17 ]]; then
        die "Kafka 4 needs Java 17 or newer, found '${version:-unknown}' (apt-get install openjdk-17-jre-headless)"
    fi
}

kafka_libs() {
    local stamp="$KAFKA_LIBS/.complete"
    if [[ -f "$stamp" && "$stamp" -nt "$KAFKA_POM" ]]; then
        return 0
    fi
    need_java
    need mvn maven
    say "fetching the Kafka broker jars from Maven Central into ${KAFKA_LIBS#"$ROOT"/} (once)"
    local tmp="$KAFKA_LIBS.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local log="$ROOT/.cache/kafka/mvn.log"
    if ! mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies -DoutputDirectory="$tmp" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -rf "$tmp"
        die "mvn could not resolve the Kafka jars (above; tools/kafka/pom.xml lists them)"
    fi
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    touch "$stamp"
    say "$(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars, $(du -sh "$KAFKA_LIBS" | cut -f1)"
}

# --- process helpers ---------------------------------------------------------------------------

port_open() {  # port_open PORT: something accepts connections on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pid_alive() {  # pid_alive PIDFILE PATTERN: the pid in PIDFILE runs a command matching PATTERN
    local pidfile="$1" pattern="$2" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid: only ever touch the process we started.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"
}

stop_pid() {  # stop_pid NAME PIDFILE PATTERN
    local name="$1" pidfile="$2" pattern="$3" pid i
    if ! pid_alive "$pidfile" "$pattern"; then
        rm -f "$pidfile"
        say "$name: not running"
        return 0
    fi
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do  # 30 s: a broker shuts down cleanly in a few seconds
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name: still running after 30 s, killing pid $pid"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$pidfile"
    say "$name: stopped (pid $pid)"
}

spawn_detached() {  # spawn_detached PIDFILE LOGFILE COMMAND...: in the background, own session
    local pidfile="$1" logfile="$2"
    shift 2
    # setsid: the service outlives this script and a Ctrl-C meant for the test run. The pid file
    # is written by the process itself just before it execs the command, so it names the service.
    # shellcheck disable=SC2016  # $$ and $@ are for the inner shell
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidfile" "$@" >"$logfile" 2>&1 </dev/null &
}

# --- Kafka -------------------------------------------------------------------------------------

kafka_url() { echo "kafka://127.0.0.1:$KAFKA_PORT"; }

kafka_write_config() {
    rm -rf "$KAFKA_DIR"
    mkdir -p "$KAFKA_DIR/data"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Single-node KRaft broker for shardworld tests and development; written by scripts/services.sh.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# 16 MiB records plus batch framing (the bus's max_message_bytes default).
message.max.bytes=17825792
replica.fetch.max.bytes=17825792
num.network.threads=2
num.io.threads=4
background.threads=2
log.retention.check.interval.ms=30000
EOF
    cat >"$KAFKA_DIR/log4j2.properties" <<EOF
status = warn
name = shardworld-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $KAFKA_DIR/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

kafka_java() {  # kafka_java MAINCLASS ARGS...: the JVM command line, on stdout, NUL-free
    printf '%s\n' java "-Xms128m" "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

kafka_prepare() {
    kafka_libs
    need_java
    if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; then
        die "port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT on 127.0.0.1 is in use by another process; set SHARDWORLD_KAFKA_PORT"
    fi
    kafka_write_config
    local cluster_id
    # 16 random bytes as unpadded base64url: the 22-character form Kafka's cluster ids take.
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    local -a cmd
    mapfile -t cmd < <(kafka_java kafka.tools.StorageTool format --cluster-id "$cluster_id" \
        -c "$KAFKA_DIR/server.properties")
    if ! "${cmd[@]}" >"$KAFKA_DIR/format.log" 2>&1; then
        cat "$KAFKA_DIR/format.log" >&2
        die "formatting Kafka storage failed (above)"
    fi
}

kafka_launch() {  # start the broker detached, its pid in $KAFKA_PID
    local -a cmd
    mapfile -t cmd < <(kafka_java kafka.Kafka "$KAFKA_DIR/server.properties")
    spawn_detached "$KAFKA_PID" "$KAFKA_DIR/stdout.log" "${cmd[@]}"
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$KAFKA_PID" ]] && return 0
        sleep 0.1
    done
    die "the Kafka process did not start (see $KAFKA_DIR/stdout.log)"
}

kafka_wait_ready() {
    local start=$SECONDS
    while ((SECONDS - start < KAFKA_START_TIMEOUT)); do
        if ! pid_alive "$KAFKA_PID" kafka.Kafka; then
            {
                echo "--- last lines of $KAFKA_DIR/broker.log:"
                tail -n 30 "$KAFKA_DIR/broker.log" 2>/dev/null || true
                echo "--- $KAFKA_DIR/stdout.log:"
                tail -n 30 "$KAFKA_DIR/stdout.log" 2>/dev/null || true
            } >&2
            rm -f "$KAFKA_PID"
            die "Kafka exited during start-up (log above)"
        fi
        if grep -q "Kafka Server started" "$KAFKA_DIR/broker.log" 2>/dev/null && port_open "$KAFKA_PORT"; then
            say "kafka: ready at $(kafka_url) after $((SECONDS - start)) s (pid $(cat "$KAFKA_PID"), log ${KAFKA_DIR#"$ROOT"/}/broker.log)"
            return 0
        fi
        sleep 0.2
    done
    {
        echo "--- last lines of $KAFKA_DIR/broker.log:"
        tail -n 30 "$KAFKA_DIR/broker.log" 2>/dev/null || true
    } >&2
    stop_pid kafka "$KAFKA_PID" kafka.Kafka
    die "Kafka was not ready within $KAFKA_START_TIMEOUT s (log above)"
}

kafka_start() {
    mkdir -p "$RUN_DIR"
    if pid_alive "$KAFKA_PID" kafka.Kafka; then
        say "kafka: already running (pid $(cat "$KAFKA_PID")) at $(kafka_url)"
        return 0
    fi
    rm -f "$KAFKA_PID"
    kafka_prepare
    kafka_launch
    kafka_wait_ready
}

kafka_foreground() {
    mkdir -p "$RUN_DIR"
    if pid_alive "$KAFKA_PID" kafka.Kafka; then
        die "a broker from $RUN_DIR is already running (pid $(cat "$KAFKA_PID")): $0 stop kafka"
    fi
    rm -f "$KAFKA_PID"
    kafka_prepare
    kafka_launch
    trap 'echo >&2; stop_pid kafka "$KAFKA_PID" kafka.Kafka; exit 0' INT TERM
    kafka_wait_ready
    say "kafka: serving $(kafka_url) with empty storage; Ctrl-C stops it"
    say "       bus URL for every process of the world: $(kafka_url)"
    local pid
    pid="$(cat "$KAFKA_PID")"
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
    rm -f "$KAFKA_PID"
    die "Kafka exited by itself (see ${KAFKA_DIR#"$ROOT"/}/broker.log)"
}

kafka_status() {
    if pid_alive "$KAFKA_PID" kafka.Kafka; then
        echo "kafka: running (pid $(cat "$KAFKA_PID")) at $(kafka_url)"
    else
        echo "kafka: stopped"
        return 1
    fi
}

# --- Redis -------------------------------------------------------------------------------------

redis_url() { echo "redis://127.0.0.1:$REDIS_PORT/0"; }

redis_start() {
    mkdir -p "$RUN_DIR"
    if pid_alive "$REDIS_PID" redis-server; then
        say "redis: already running (pid $(cat "$REDIS_PID")) at $(redis_url)"
        return 0
    fi
    rm -f "$REDIS_PID"
    need redis-server redis-server
    need redis-cli redis-tools
    if port_open "$REDIS_PORT"; then
        die "port $REDIS_PORT on 127.0.0.1 is in use by another process; set SHARDWORLD_REDIS_PORT"
    fi
    rm -rf "$REDIS_DIR"
    mkdir -p "$REDIS_DIR"
    spawn_detached "$REDIS_PID" "$REDIS_DIR/stdout.log" \
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log"
    local i
    for ((i = 0; i < 150; i++)); do
        if [[ -s "$REDIS_PID" ]] && ! pid_alive "$REDIS_PID" redis-server && ((i > 10)); then
            tail -n 20 "$REDIS_DIR/redis.log" "$REDIS_DIR/stdout.log" >&2 2>/dev/null || true
            rm -f "$REDIS_PID"
            die "redis-server exited during start-up (log above)"
        fi
        if [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; then
            say "redis: ready at $(redis_url) (pid $(cat "$REDIS_PID"))"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$REDIS_DIR/redis.log" >&2 2>/dev/null || true
    stop_pid redis "$REDIS_PID" redis-server
    die "redis did not answer PING within 15 s (log above)"
}

redis_status() {
    if pid_alive "$REDIS_PID" redis-server; then
        echo "redis: running (pid $(cat "$REDIS_PID")) at $(redis_url)"
    else
        echo "redis: stopped"
        return 1
    fi
}

# --- commands ----------------------------------------------------------------------------------

check_names() {
    local s
    for s in "$@"; do
        [[ "$s" == kafka || "$s" == redis ]] || die "unknown service '$s' (kafka, redis)"
    done
}

start_all() {
    local s
    for s in "$@"; do "${s}_start"; done
}

stop_all() {
    local s
    for s in "$@"; do
        case "$s" in
        kafka) stop_pid kafka "$KAFKA_PID" kafka.Kafka ;;
        redis) stop_pid redis "$REDIS_PID" redis-server ;;
        esac
    done
}

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    [[ $# -ge 1 ]] || usage
    local command="$1"
    shift
    case "$command" in
    start | stop | status)
        local -a names=("$@")
        [[ ${#names[@]} -gt 0 ]] || names=(kafka redis)
        check_names "${names[@]}"
        case "$command" in
        start) start_all "${names[@]}" ;;
        stop) stop_all "${names[@]}" ;;
        status)
            local rc=0 s
            for s in "${names[@]}"; do "${s}_status" || rc=3; done
            return "$rc"
            ;;
        esac
        ;;
    with)
        local -a names=()
        while [[ $# -gt 0 && "$1" != "--" ]]; do names+=("$1"); shift; done
        [[ $# -gt 0 ]] || die "usage: $0 with [kafka] [redis] -- COMMAND ..."
        shift
        [[ $# -gt 0 ]] || die "usage: $0 with [kafka] [redis] -- COMMAND ..."
        [[ ${#names[@]} -gt 0 ]] || names=(kafka redis)
        check_names "${names[@]}"
        # Stop on every way out: success, failure, a failed start, Ctrl-C. (A global: the trap
        # runs after main's locals are gone.)
        WITH_SERVICES=("${names[@]}")
        trap 'stop_all "${WITH_SERVICES[@]}"' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        start_all "${names[@]}"
        local s
        for s in "${names[@]}"; do
            case "$s" in
            kafka) SHARDWORLD_KAFKA_URL="$(kafka_url)" && export SHARDWORLD_KAFKA_URL ;;
            redis) SHARDWORLD_REDIS_URL="$(redis_url)" && export SHARDWORLD_REDIS_URL ;;
            esac
        done
        local rc=0
        "$@" || rc=$?
        return "$rc"
        ;;
    foreground)
        [[ "${1:-}" == kafka ]] || die "usage: $0 foreground kafka"
        kafka_foreground
        ;;
    kafka-libs) kafka_libs ;;
    -h | --help | help) usage ;;
    *) die "unknown command '$command' (start, stop, status, with, foreground, kafka-libs)" ;;
    esac
}

main "$@"
