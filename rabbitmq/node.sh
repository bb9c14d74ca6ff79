#!/usr/bin/env bash
# A private RabbitMQ node for this checkout, for `make run` and `make test`.
#
# The node keeps everything under rabbitmq/.node/ (data, logs, its own HOME with the
# Erlang cookie, the generated config) and gets a node name and ports derived from the
# checkout's absolute path, so it never collides with a system RabbitMQ (5672, 15672,
# 25672) nor with the node of another checkout on the same machine. It does not use the
# system service: the server runs as the calling user, straight from the package's
# /usr/lib/rabbitmq/bin (the /usr/sbin wrappers switch to the rabbitmq user).
#
# Usage: rabbitmq/node.sh <command>
#   install  install Debian's rabbitmq-server package if RabbitMQ is missing
#   start    install if needed, start the node (or report the one already running)
#   stop     stop the node; harmless when it is not running
#   status   say whether the node runs (exit 0) or not (exit 1), with its name and URL
#   url      print the node's AMQP URL
#   reset    stop the node and delete rabbitmq/.node
#   ctl ...  run rabbitmqctl against the node, e.g. `rabbitmq/node.sh ctl list_queues`
#
# After `start`, rabbitmq/.node/env holds `export` lines (AMQP_URL, RABBITMQ_NODENAME,
# RABBITMQ_AMQP_PORT and, with the management plugin, RABBITMQ_MANAGEMENT_URL/_PORT).
#
# Environment:
#   RABBITMQ_PORT             fixed AMQP port instead of the derived one
#   RABBITMQ_MANAGEMENT_PORT  fixed management port (default: AMQP port + 5000)
#   RABBITMQ_DIST_PORT        fixed Erlang distribution port (default: AMQP port + 10000)
#   RABBITMQ_MANAGEMENT=1     also enable the management plugin (UI and HTTP API on the
#                             management port; it makes start ~1 s and stop ~5 s slower)
#   RABBITMQ_START_TIMEOUT    seconds to wait for the node to boot (default 60)
#   RABBITMQ_BIN_DIR          where rabbitmq-server and rabbitmqctl are
#                             (default /usr/lib/rabbitmq/bin)
#   RABBITMQ_ALLOW_OLD=1      accept a RabbitMQ older than 3.10 (the topology needs 3.10)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
PROJECT_DIR=$(dirname "$SCRIPT_DIR")
NODE_DIR=$SCRIPT_DIR/.node

RMQ_BIN=${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}
SERVER=$RMQ_BIN/rabbitmq-server
CTL=$RMQ_BIN/rabbitmqctl
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-60}

# Node name and the start of the port search come from a hash of the checkout's path.
PATH_HASH=$(printf '%s' "$PROJECT_DIR" | cksum | cut -d' ' -f1)
NODE_SHORT=imagejobs-$(printf '%08x' "$PATH_HASH")
NODE=$NODE_SHORT@localhost

# Derived AMQP ports are in 20000-24999; management is +5000 (25000-29999) and Erlang
# distribution +10000 (30000-34999), so the three ranges of all checkouts never overlap.
PORT_BASE=20000
PORT_SPAN=5000
MANAGEMENT_OFFSET=5000
DIST_OFFSET=10000
# Never used, even when free: the defaults of a system node (epmd, AMQP, AMQPS,
# management, Prometheus, distribution) and the port range of rabbitmqctl itself.
RESERVED_PORTS=" 4369 5671 5672 15671 15672 15692 25672 35672 35673 35674 35675 35676 35677 35678 35679 35680 35681 35682 "

HOME_DIR=$NODE_DIR/home
MNESIA_BASE=$NODE_DIR/mnesia
LOG_DIR=$NODE_DIR/log
CONFIG_FILE=$NODE_DIR/rabbitmq.conf
PLUGINS_FILE=$NODE_DIR/enabled_plugins
ENV_CONF_FILE=$NODE_DIR/rabbitmq-env.conf
PID_FILE=$NODE_DIR/rabbitmq.pid
LAUNCHER_PID_FILE=$NODE_DIR/launcher.pid
PORTS_FILE=$NODE_DIR/ports
ENV_FILE=$NODE_DIR/env
STARTUP_LOG=$LOG_DIR/startup.log
LOCK_FILE=$NODE_DIR/.lock

# A flag on the beam's command line that names our node: it lets us find a node process
# that no longer answers (the node name itself is not on the command line).
MARKER="-imagejobs_node $NODE_SHORT"

AMQP_PORT=
MANAGEMENT_PORT=
DIST_PORT=

say() { printf 'rabbitmq: %s\n' "$*"; }
warn() { printf 'rabbitmq: %s\n' "$*" >&2; }
die() {
    warn "$*"
    exit 1
}

usage() {
    sed -n '/^# Usage:/,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

# --- installation -----------------------------------------------------------------------

cannot_install() {
    cat >&2 <<EOF
rabbitmq: RabbitMQ is not installed ($SERVER is missing) and it cannot be installed here:
rabbitmq: $1.
rabbitmq: Either install RabbitMQ 3.10 or later yourself (Debian/Ubuntu: apt-get install rabbitmq-server),
rabbitmq: or use Docker instead: docker compose up,
rabbitmq: or point AMQP_URL at a RabbitMQ you already run, e.g.
rabbitmq:   export AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
EOF
    exit 1
}

cmd_install() {
    if [ -x "$SERVER" ]; then
        say "RabbitMQ is installed ($SERVER)"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || cannot_install "apt-get is not available"
    local -a sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || cannot_install "you are not root and sudo is not available"
        sudo=(sudo)
    fi
    say "installing Debian's rabbitmq-server package (it may try to start the system service;"
    say "that one is not used: this project runs its own node on other ports)"
    "${sudo[@]}" apt-get update ||
        cannot_install "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends rabbitmq-server ||
        cannot_install "apt-get install rabbitmq-server failed"
    [ -x "$SERVER" ] || cannot_install "the package did not provide $SERVER"
}

check_version() {
    local dir version major minor
    dir=$(find "$RMQ_BIN/../lib" -maxdepth 1 -name 'rabbitmq_server-*' 2>/dev/null | sort -V | tail -n 1)
    version=${dir##*/rabbitmq_server-}
    [ -n "$dir" ] && [ -n "$version" ] || return 0 # unknown layout: let the node tell
    major=${version%%.*}
    minor=${version#*.}
    minor=${minor%%.*}
    case "$major$minor" in *[!0-9]*) return 0 ;; esac
    if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 10 ]; }; then
        [ "${RABBITMQ_ALLOW_OLD:-}" = 1 ] && {
            warn "RabbitMQ $version is older than 3.10; going on because RABBITMQ_ALLOW_OLD=1"
            return 0
        }
        die "RabbitMQ $version is installed, but imagejobs needs 3.10 or later (at-least-once
rabbitmq: dead-lettering of quorum queues). Use docker compose up, or point AMQP_URL at a
rabbitmq: RabbitMQ 3.10+ you run yourself (RABBITMQ_ALLOW_OLD=1 starts it anyway)."
    fi
}

# --- environment of the server and of rabbitmqctl --------------------------------------

# The Erlang cookie lives in $HOME, so the server and every rabbitmqctl call must see the
# same HOME. RABBITMQ_CONF_ENV_FILE points at our own (empty) file so that
# /etc/rabbitmq/rabbitmq-env.conf of a system install does not change our node.
common_env() {
    local -a vars=(
        HOME="$HOME_DIR"
        RABBITMQ_CONF_ENV_FILE="$ENV_CONF_FILE"
        RABBITMQ_NODENAME="$NODE"
        RABBITMQ_USE_LONGNAME=false
        RABBITMQ_MNESIA_BASE="$MNESIA_BASE"
        RABBITMQ_LOG_BASE="$LOG_DIR"
        RABBITMQ_CONFIG_FILE="$CONFIG_FILE"
        RABBITMQ_ADVANCED_CONFIG_FILE="$NODE_DIR/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$PLUGINS_FILE"
        RABBITMQ_PID_FILE="$PID_FILE"
        ERL_CRASH_DUMP="$LOG_DIR/erl_crash.dump"
    )
    # The Elixir CLI complains on a non-UTF-8 locale.
    case "${LC_ALL:-${LC_CTYPE:-${LANG:-}}}" in
        *UTF-8* | *utf8* | *UTF8* | *utf-8*) ;;
        *) if locale -a 2>/dev/null | grep -qix 'c\.utf-\{0,1\}8'; then vars+=(LC_ALL=C.UTF-8); fi ;;
    esac
    printf '%s\0' "${vars[@]}"
}

# The `env ...` prefix that runs a program with our node's environment (in NODE_ENV);
# variables of the caller that would send it elsewhere are removed.
NODE_ENV=()
node_env() {
    local -a vars
    mapfile -d '' -t vars < <(common_env)
    NODE_ENV=(env -u RABBITMQ_ERLANG_COOKIE -u RABBITMQ_ENABLED_PLUGINS -u RABBITMQ_NODE_IP_ADDRESS
        -u RABBITMQ_SERVER_START_ARGS -u RABBITMQ_SERVER_ERL_ARGS -u RABBITMQ_CTL_ERL_ARGS
        -u RABBITMQ_DIST_PORT -u RABBITMQ_NODE_PORT -u RABBITMQ_CONFIG_FILES
        "${vars[@]}")
}

ctl() {
    node_env
    "${NODE_ENV[@]}" "$CTL" -n "$NODE" "$@"
}

# --- finding our node -------------------------------------------------------------------

# The epmd binary, to ask cheaply whether our node name is registered.
find_epmd() {
    if command -v epmd >/dev/null 2>&1; then
        command -v epmd
        return 0
    fi
    local f
    for f in /usr/lib/erlang/erts-*/bin/epmd /usr/local/lib/erlang/erts-*/bin/epmd; do
        [ -x "$f" ] && {
            printf '%s\n' "$f"
            return 0
        }
    done
    return 1
}

# Exit 0 if epmd knows our node name, 1 if not, 2 if that cannot be told.
registered() {
    local epmd out
    epmd=$(find_epmd) || return 2
    out=$("$epmd" -names 2>/dev/null) || return 1 # no epmd running: no node either
    grep -q "^name $NODE_SHORT at port " <<<"$out"
}

# True if our node runs and answers rabbitmqctl (the broker itself may still be booting).
answers() {
    local r=0
    registered || r=$?
    [ "$r" -eq 1 ] && return 1
    [ -s "$HOME_DIR/.erlang.cookie" ] || return 1
    ctl -q ping -t 10 >/dev/null 2>&1
}

# PIDs of the beam processes of our node (found by the marker on their command line).
beam_pids() {
    local f pid cmd
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        cmd=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
        case "$cmd" in
            *beam*" $MARKER "*) printf '%s\n' "$pid" ;;
        esac
    done
}

# The launcher (the rabbitmq-server shell script waiting on the beam), if it still runs.
launcher_pid() {
    local pid
    [ -s "$LAUNCHER_PID_FILE" ] || return 0
    pid=$(cat "$LAUNCHER_PID_FILE")
    case "$pid" in '' | *[!0-9]*) return 0 ;; esac
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'rabbitmq-server'; then
        printf '%s\n' "$pid"
    fi
}

our_pids() {
    {
        beam_pids
        launcher_pid
    } | sort -u
}

# True if one of the given processes is alive; a zombie is not (where init does not reap
# orphans, as in some containers, a dead launcher stays a zombie and `kill -0` succeeds).
alive() {
    local pid state
    for pid in "$@"; do
        state=$(sed 's/.*) //' 2>/dev/null </proc/"$pid"/stat) || continue
        [ "${state%% *}" != Z ] && return 0
    done
    return 1
}

# Sends TERM to the given processes, waits up to $1 seconds, then KILLs what is left.
terminate() {
    local grace=$1
    shift
    [ "$#" -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    kill -CONT "$@" 2>/dev/null || true # a stopped process handles TERM only when resumed
    local i
    for ((i = 0; i < grace * 10; i++)); do
        alive "$@" || return 0
        sleep 0.1
    done
    warn "node processes still alive after ${grace}s, killing them: $*"
    kill -KILL "$@" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$@" || return 0
        sleep 0.1
    done
    die "cannot kill node processes $* (do they belong to another user?)"
}

# Removes what is left of a node that died or hangs: processes and pid files.
clear_stale() {
    local -a pids
    mapfile -t pids < <(our_pids)
    if [ "${#pids[@]}" -gt 0 ]; then
        warn "found a node of an earlier run that does not answer (pids ${pids[*]}); stopping it"
        terminate 10 "${pids[@]}"
    fi
    rm -f "$PID_FILE" "$LAUNCHER_PID_FILE"
}

# --- ports ------------------------------------------------------------------------------

# True if something listens on TCP port $1 (on any address).
port_taken() {
    local port=$1
    if command -v ss >/dev/null 2>&1 &&
        ss -Htln 2>/dev/null | awk -v p=":$port" '$4 ~ (p "$") { found = 1 } END { exit !found }'; then
        return 0
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

valid_port() {
    case "$1" in '' | *[!0-9]*) return 1 ;; esac
    [ "$1" -ge 1024 ] && [ "$1" -le 65535 ]
}

reserved() {
    case "$RESERVED_PORTS" in *" $1 "*) return 0 ;; esac
    return 1
}

# Sets AMQP_PORT, MANAGEMENT_PORT and DIST_PORT: those of the running node if it runs,
# else those a start would pick now (see choose_ports).
planned_ports() {
    local a m d
    if [ -s "$PORTS_FILE" ] && read -r a m d <"$PORTS_FILE" &&
        valid_port "$a" && valid_port "$m" && valid_port "$d" && registered; then
        AMQP_PORT=$a MANAGEMENT_PORT=$m DIST_PORT=$d
        return 0
    fi
    choose_ports lenient
}

# $1 + $2, or $1 - $2 where the sum is not a port.
shifted() {
    if [ $(($1 + $2)) -le 65535 ]; then echo $(($1 + $2)); else echo $(($1 - $2)); fi
}

ports_free() {
    local p
    for p in "$AMQP_PORT" "$MANAGEMENT_PORT" "$DIST_PORT"; do
        port_taken "$p" && return 1
    done
    return 0
}

# Picks the ports for a start: with RABBITMQ_PORT, that one (and the management and
# distribution ports derived from it unless set too); else the first triple, from the
# hash of the checkout's path on, that is free and avoids the reserved ports. The same
# checkout thus gets the same ports every time unless another program took them.
# With `strict` (start), ports that are taken are an error; else they are just reported.
choose_ports() {
    local mode=${1:-strict}
    if [ -n "${RABBITMQ_PORT:-}" ]; then
        valid_port "$RABBITMQ_PORT" || die "RABBITMQ_PORT=$RABBITMQ_PORT is not a port number in 1024-65535"
        AMQP_PORT=$RABBITMQ_PORT
        MANAGEMENT_PORT=${RABBITMQ_MANAGEMENT_PORT:-$(shifted "$AMQP_PORT" "$MANAGEMENT_OFFSET")}
        DIST_PORT=${RABBITMQ_DIST_PORT:-$(shifted "$AMQP_PORT" "$DIST_OFFSET")}
        valid_port "$MANAGEMENT_PORT" || die "bad management port $MANAGEMENT_PORT"
        valid_port "$DIST_PORT" || die "bad distribution port $DIST_PORT"
        [ "$mode" = strict ] || return 0
        local p
        for p in "$AMQP_PORT" "$MANAGEMENT_PORT" "$DIST_PORT"; do
            port_taken "$p" && die "port $p is already in use by another program (RABBITMQ_PORT=$RABBITMQ_PORT:
rabbitmq: AMQP $AMQP_PORT, management $MANAGEMENT_PORT, distribution $DIST_PORT)"
        done
        return 0
    fi
    local i a
    for ((i = 0; i < 200; i++)); do
        a=$((PORT_BASE + (PATH_HASH + i) % PORT_SPAN))
        AMQP_PORT=$a MANAGEMENT_PORT=$((a + MANAGEMENT_OFFSET)) DIST_PORT=$((a + DIST_OFFSET))
        reserved "$AMQP_PORT" || reserved "$MANAGEMENT_PORT" || reserved "$DIST_PORT" && continue
        ports_free && return 0
    done
    [ "$mode" = strict ] || return 0
    die "no free ports found in $PORT_BASE-$((PORT_BASE + PORT_SPAN - 1)) (+$MANAGEMENT_OFFSET, +$DIST_OFFSET); set RABBITMQ_PORT"
}

amqp_url() { printf 'amqp://guest:guest@127.0.0.1:%s/%%2f\n' "$AMQP_PORT"; }

# Whether the next start enables the management plugin: enabled_plugins lists it, or
# RABBITMQ_MANAGEMENT=1 asks for it.
wants_management() {
    [ "${RABBITMQ_MANAGEMENT:-}" = 1 ] || grep -q 'rabbitmq_management' "$SCRIPT_DIR/enabled_plugins" 2>/dev/null
}

# Whether the node (as last started) has the management plugin.
management_enabled() {
    if [ -f "$PLUGINS_FILE" ]; then
        grep -q 'rabbitmq_management' "$PLUGINS_FILE"
    else
        wants_management
    fi
}

# --- files of the node ------------------------------------------------------------------

lock() {
    mkdir -p "$NODE_DIR"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$LOCK_FILE"
        flock -w 120 9 || die "another rabbitmq/node.sh is busy with this node (lock $LOCK_FILE)"
    fi
}

write_files() {
    mkdir -p "$HOME_DIR" "$MNESIA_BASE" "$LOG_DIR"
    if [ ! -s "$HOME_DIR/.erlang.cookie" ]; then
        (
            umask 077
            head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c 40 >"$HOME_DIR/.erlang.cookie"
        )
        chmod 400 "$HOME_DIR/.erlang.cookie"
    fi
    printf '# Empty on purpose: keeps /etc/rabbitmq/rabbitmq-env.conf away from this node.\n' >"$ENV_CONF_FILE"
    if wants_management && ! grep -q 'rabbitmq_management' "$SCRIPT_DIR/enabled_plugins"; then
        # Add it to the list, which is an Erlang term such as `[].` or `[a,b].`.
        if grep -q '^[[:space:]]*\[[[:space:]]*\][[:space:]]*\.' "$SCRIPT_DIR/enabled_plugins"; then
            printf '[rabbitmq_management].\n'
        else
            sed '0,/\[/s//[rabbitmq_management,/' "$SCRIPT_DIR/enabled_plugins"
        fi >"$PLUGINS_FILE"
    else
        cp "$SCRIPT_DIR/enabled_plugins" "$PLUGINS_FILE"
    fi
    {
        printf '# Generated by rabbitmq/node.sh from rabbitmq/rabbitmq.conf; edit that file instead.\n'
        if management_enabled; then
            sed "s/@AMQP_PORT@/$AMQP_PORT/g; s/@MANAGEMENT_PORT@/$MANAGEMENT_PORT/g" "$SCRIPT_DIR/rabbitmq.conf"
        else
            sed "s/@AMQP_PORT@/$AMQP_PORT/g; /^[[:space:]]*management\./d" "$SCRIPT_DIR/rabbitmq.conf"
        fi
    } >"$CONFIG_FILE"
    printf '%s %s %s\n' "$AMQP_PORT" "$MANAGEMENT_PORT" "$DIST_PORT" >"$PORTS_FILE"
    write_env_file
}

write_env_file() {
    {
        printf '# Written by rabbitmq/node.sh: the private RabbitMQ node of this checkout.\n'
        printf '# rabbitmqctl needs HOME=%s to find its cookie: use rabbitmq/node.sh ctl ...\n' "$HOME_DIR"
        printf "export AMQP_URL='%s'\n" "$(amqp_url)"
        printf "export RABBITMQ_NODENAME='%s'\n" "$NODE"
        printf 'export RABBITMQ_AMQP_PORT=%s\n' "$AMQP_PORT"
        if management_enabled; then
            printf 'export RABBITMQ_MANAGEMENT_PORT=%s\n' "$MANAGEMENT_PORT"
            printf "export RABBITMQ_MANAGEMENT_URL='http://127.0.0.1:%s/'\n" "$MANAGEMENT_PORT"
        fi
    } >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

print_running() {
    say "node $NODE is running"
    say "AMQP_URL=$(amqp_url)"
    if management_enabled; then
        say "management: http://127.0.0.1:$MANAGEMENT_PORT/ (guest/guest)"
    fi
    say "settings: . $ENV_FILE"
}

show_log_tail() {
    local run
    if [ -s "$STARTUP_LOG" ]; then
        # This start's part of the startup log: its first errors name the cause, its end
        # how the node went down.
        run=$(awk '/^==== .*: starting / { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$STARTUP_LOG")
        if grep -q '\[error\]' <<<"$run"; then
            warn "---- first errors in $STARTUP_LOG ----"
            grep -m 12 '\[error\]' <<<"$run" >&2 || true
        fi
        warn "---- last lines of $STARTUP_LOG ----"
        tail -n 25 <<<"$run" >&2
    fi
    if [ -s "$LOG_DIR/$NODE.log" ]; then
        warn "---- last lines of $LOG_DIR/$NODE.log ----"
        tail -n 25 "$LOG_DIR/$NODE.log" >&2
    fi
}

# --- commands ---------------------------------------------------------------------------

cmd_start() {
    [ -x "$SERVER" ] || cmd_install
    check_version
    lock
    if answers; then
        local wanted=${RABBITMQ_PORT:-}
        planned_ports
        write_env_file
        print_running
        if [ -n "$wanted" ] && [ "$wanted" != "$AMQP_PORT" ]; then
            warn "the running node listens on $AMQP_PORT, not RABBITMQ_PORT=$wanted: stop it first to change"
        fi
        if wants_management && ! management_enabled; then
            warn "the running node has no management plugin: stop it first to enable it"
        fi
        return 0
    fi
    clear_stale
    choose_ports
    write_files

    local started=$SECONDS
    say "starting node $NODE on 127.0.0.1:$AMQP_PORT (data in $NODE_DIR)"
    node_env
    local -a server_env=(
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$AMQP_PORT"
        RABBITMQ_DIST_PORT="$DIST_PORT"
        # Distribution on loopback only; the marker lets us find the process later.
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} $MARKER"
    )
    local -a detach=(nohup)
    command -v setsid >/dev/null 2>&1 && detach=(setsid nohup)
    printf '\n==== %s: starting %s\n' "$(date '+%F %T')" "$NODE" >>"$STARTUP_LOG"
    # Detached (own session, no terminal, the lock's descriptor closed), in our directory
    # so that nothing (erl_crash.dump...) lands in the caller's. Without setsid in the way,
    # $! is the pid of rabbitmq-server, the script that stops the beam on TERM.
    (
        cd "$NODE_DIR"
        exec 9>&-
        exec "${detach[@]}" "${NODE_ENV[@]}" "${server_env[@]}" "$SERVER" </dev/null >>"$STARTUP_LOG" 2>&1
    ) &
    local launcher=$!
    echo "$launcher" >"$LAUNCHER_PID_FILE"

    # Wait until the node has registered with epmd (cheap to ask), then until the broker
    # has booted.
    local deadline=$((SECONDS + START_TIMEOUT)) r
    while :; do
        r=0
        registered || r=$?
        [ "$r" -eq 0 ] && break
        if [ "$r" -eq 2 ] && ctl -q ping -t 2 >/dev/null 2>&1; then break; fi
        alive "$launcher" || start_failed "the node exited while starting"
        [ "$SECONDS" -lt "$deadline" ] || start_failed "the node did not come up within ${START_TIMEOUT}s"
        sleep 0.2
    done
    local left=$((deadline - SECONDS))
    [ "$left" -ge 1 ] || left=1
    ctl -q await_startup -t "$left" >/dev/null 2>&1 ||
        start_failed "the broker did not finish booting within ${START_TIMEOUT}s"
    print_running
    say "started in $((SECONDS - started))s"
}

start_failed() {
    warn "$1"
    show_log_tail
    clear_stale >/dev/null 2>&1 || true
    die "could not start RabbitMQ node $NODE (logs in $LOG_DIR)"
}

# Stops our node: politely with rabbitmqctl, then by signals for what is left.
stop_node() {
    local asked=
    if answers; then
        say "stopping node $NODE"
        if ctl -q stop >/dev/null 2>&1; then
            asked=1
        else
            warn "rabbitmqctl stop failed; signalling the node instead"
        fi
    fi
    local -a pids
    mapfile -t pids < <(our_pids)
    [ "${#pids[@]}" -gt 0 ] || return 0
    if [ -n "$asked" ]; then
        # A node that accepted `stop` exits on its own within seconds.
        local i
        for ((i = 0; i < 300; i++)); do
            alive "${pids[@]}" || break
            sleep 0.1
        done
        mapfile -t pids < <(our_pids)
    else
        warn "node processes ${pids[*]} do not answer; stopping them by signal"
    fi
    # TERM makes rabbitmq-server (and the beam) shut down cleanly; KILL comes last.
    terminate 20 "${pids[@]}"
}

cmd_stop() {
    if [ ! -d "$NODE_DIR" ]; then
        say "node $NODE is not running"
        return 0
    fi
    lock
    stop_node
    rm -f "$PID_FILE" "$LAUNCHER_PID_FILE"
    say "node $NODE is stopped"
}

cmd_status() {
    planned_ports
    if [ -d "$NODE_DIR" ] && answers; then
        print_running
        return 0
    fi
    local -a pids
    mapfile -t pids < <(our_pids)
    if [ "${#pids[@]}" -gt 0 ]; then
        say "node $NODE is not answering (processes ${pids[*]} remain; start replaces them)"
    else
        say "node $NODE is not running"
    fi
    say "its AMQP URL would be $(amqp_url)"
    return 1
}

cmd_url() {
    planned_ports
    amqp_url
}

cmd_reset() {
    if [ -d "$NODE_DIR" ]; then
        lock
        stop_node
        case "$NODE_DIR" in
            */rabbitmq/.node) rm -rf -- "$NODE_DIR" ;;
            *) die "refusing to delete $NODE_DIR" ;;
        esac
    fi
    say "node $NODE is stopped and $NODE_DIR is deleted"
}

cmd_ctl() {
    [ -d "$HOME_DIR" ] || die "node $NODE was never started here (no $HOME_DIR)"
    node_env
    exec "${NODE_ENV[@]}" "$CTL" -n "$NODE" "$@"
}

usage_error() {
    usage >&2
    exit 2
}

main() {
    local cmd=${1:-}
    [ "$#" -gt 0 ] && shift
    case "$cmd" in
        install) cmd_install ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        url) cmd_url ;;
        reset) cmd_reset ;;
        ctl) cmd_ctl "$@" ;;
        -h | --help | help) usage ;;
        *) usage_error ;;
    esac
}

main "$@"
