#!/usr/bin/env bash
# Private RabbitMQ node(s) of this checkout for `make run` and `make test`: one, or with
# BROKER_NODES=3 a local cluster, run as the caller from /usr/lib/rabbitmq/bin (RabbitMQ 4.0
# with RABBITMQ_SERIES=4.0: rabbitmq/series.sh). State is in rabbitmq/.node/ (node-<i>/: data,
# logs, config, pid files; home/: the shared Erlang cookie; series: the RabbitMQ series),
# written by rabbitmq/files.sh.
# Names (imagejobs-<hash>-<i>@localhost) and 100 ports derive from the checkout's path.
#
# Usage: rabbitmq/node.sh <command> [args]
#   install              install Debian's rabbitmq-server package if RabbitMQ is missing (4.0:
#                        into rabbitmq/.series/4.0/root, by debootstrap of Debian 13)
#   start                start the nodes as one cluster (or report the running deployment)
#   stop                 stop every node; harmless when nothing runs
#   status               show every node; exit 0 if all of them answer, 1 otherwise
#   url                  print AMQP_URL (the nodes' AMQP URLs, comma separated)
#   reset                stop every node and delete rabbitmq/.node (also to switch series)
#   pid I                print node I's beam pid (node 1's pid file: .node/rabbitmq.pid)
#   stop-node I [--kill] stop node I of the cluster (--kill: SIGKILL its beam instead)
#   start-node I         start node I again; waits until it is back in the cluster
#   ctl ARGS...          rabbitmqctl against node $BROKER_NODE (default 1)
#   ctl-node I ARGS...   rabbitmqctl against node I
#   queues|streams|diagnostics ARGS...  rabbitmq-queues/-streams/-diagnostics, like ctl
#
# `start` writes rabbitmq/.node/env (mode 0600: the URLs carry the password of the nodes'
# own user `imagejobs` on vhost `imagejobs`; there is no guest): export lines of AMQP_URL,
# AMQP_URL_<i>, BROKER_NODES, RABBITMQ_NODENAME (node 1), RABBITMQ_NODENAMES,
# RABBITMQ_AMQP_PORT (node 1), RABBITMQ_PROMETHEUS_URLS, RABBITMQ_VHOST, with BROKER_TLS=1
# AMQPS_URL and AMQP_CA_FILE, and with management RABBITMQ_MANAGEMENT_URL/_PORT (node 1).
# Ports: block B = 20000 + (hash % 120) * 100; node i uses B + (i-1)*10 + 0 AMQP, +1 AMQPS
# (reserved), +2 management, +3 Prometheus, +4 Erlang distribution; the CLI B+90..B+99.
#
# Environment:
#   BROKER_NODES=N          nodes of the deployment, 1..9 (default: the existing one, else 1)
#   BROKER_PORT_BASE=B      use the port block B..B+99 instead of the derived one
#   BROKER_NODE=I           the node that ctl, queues, streams, diagnostics talk to (default 1)
#   BROKER_TLS=1            also a TLS listener (AMQPS, node port +1) with a CA made once in
#                           rabbitmq/.node/tls/; the env file then has AMQPS_URL, AMQP_CA_FILE
#   RABBITMQ_MANAGEMENT=1   also enable the management plugin (UI and HTTP API)
#   RABBITMQ_START_TIMEOUT  seconds to wait for the nodes to boot and cluster (default 90)
#   RABBITMQ_SERIES=4.0     RabbitMQ 4.0 from Debian 13, run as root under chroot (default 3.10:
#                           Debian 12's, on the host); start refuses a folder of another series
#   RABBITMQ_BIN_DIR        where rabbitmq-server and rabbitmqctl are (/usr/lib/rabbitmq/bin)
#   RABBITMQ_ALLOW_OLD=1    accept a RabbitMQ older than 3.10 (the topology needs 3.10)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
NODE_DIR=$SCRIPT_DIR/.node HOME_DIR=$SCRIPT_DIR/.node/home ENV_FILE=$SCRIPT_DIR/.node/env
RMQ_BIN=${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}
SERVER=$RMQ_BIN/rabbitmq-server START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
HASH=$(printf '%s' "$(dirname "$SCRIPT_DIR")" | cksum | cut -d' ' -f1)
HASH8=$(printf '%08x' "$HASH") DEFAULT_BASE=$((20000 + HASH % 120 * 100))
# The lanes of the work queue sit behind a consistent-hash exchange (fair share).
PLUGINS=(rabbitmq_prometheus rabbitmq_consistent_hash_exchange)
if [ "${RABBITMQ_MANAGEMENT:-}" = 1 ]; then PLUGINS+=(rabbitmq_management); fi
N=1 BASE=$DEFAULT_BASE LAUNCHED=() ENVP=()
# shellcheck source=rabbitmq/series.sh
. "$SCRIPT_DIR/series.sh"
# shellcheck source=rabbitmq/files.sh
. "$SCRIPT_DIR/files.sh"

say() { printf 'rabbitmq: %s\n' "$*"; }
warn() { printf 'rabbitmq: %s\n' "$*" >&2; }
die() { warn "$@" && exit 1; }
usage() { sed -n '/^# Usage:/,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

cannot_install() {
    die "RabbitMQ is missing ($SERVER) and cannot be installed here: $1. Install RabbitMQ 3.10+
rabbitmq: (apt-get install rabbitmq-server), use docker compose up, or point AMQP_URL at a
rabbitmq: RabbitMQ you run, e.g. export AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'"
}
cmd_install() {
    if [ -n "$SERIES_ROOT" ]; then series_install && return 0; fi
    if [ -x "$SERVER" ]; then say "RabbitMQ is installed ($SERVER)" && return 0; fi
    command -v apt-get >/dev/null || cannot_install "apt-get is not available"
    local -a sudo=()
    [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null && sudo=(sudo); } || cannot_install "not root and no sudo"
    say "installing Debian's rabbitmq-server package (its system service, if started, is not used)"
    "${sudo[@]}" apt-get update || cannot_install "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        rabbitmq-server || cannot_install "apt-get install rabbitmq-server failed"
    [ -x "$SERVER" ] || cannot_install "the package did not provide $SERVER"
}
check_version() {
    local v
    v=$(find "$SERIES_ROOT$RMQ_BIN/../lib" -maxdepth 1 -name 'rabbitmq_server-*' 2>/dev/null | sort -V | tail -n 1)
    v=${v##*/rabbitmq_server-}
    [[ $v =~ ^([0-9]+)\.([0-9]+) ]] || return 0 # unknown layout: let the node tell
    ((BASH_REMATCH[1] * 1000 + BASH_REMATCH[2] >= 3010)) && return 0
    [ "${RABBITMQ_ALLOW_OLD:-}" != 1 ] || { warn "RabbitMQ $v is older than 3.10; RABBITMQ_ALLOW_OLD=1"; return 0; }
    die "RabbitMQ $v is installed, but imagejobs needs 3.10+ (at-least-once dead-lettering of
rabbitmq: quorum queues). Use docker compose up, or point AMQP_URL at a RabbitMQ 3.10+ you run
rabbitmq: yourself (RABBITMQ_ALLOW_OLD=1 starts it anyway)."
}

# Nodes, ports, pid files.
ndir() { echo "$NODE_DIR/node-$1"; }
name() { echo "imagejobs-$HASH8-$1@localhost"; }
port() { echo $((BASE + ($1 - 1) * 10 + $2)); } # node, offset
# The deployment's own user on its own vhost (no guest); the password is made once.
BROKER_USER=imagejobs BROKER_VHOST=imagejobs CREDENTIALS=$SCRIPT_DIR/.node/credentials
password() { cat "$CREDENTIALS" 2>/dev/null || true; }
# URLs as printed: the password is in the env file, not on the terminal.
masked() { sed 's/:[^:@/]*@/:***@/g'; }
url() { printf 'amqp://%s:%s@127.0.0.1:%s/%s' "$BROKER_USER" "$(password)" "$(port "$1" 0)" "$BROKER_VHOST"; }
tls_url() { printf 'amqps://%s:%s@localhost:%s/%s' "$BROKER_USER" "$(password)" "$(port "$1" 1)" "$BROKER_VHOST"; }
all_urls() { local i s=""; for ((i = 1; i <= N; i++)); do s+=${s:+,}$(${1:-url} "$i"); done; echo "$s"; }
recorded() { cat "$NODE_DIR/nodes" 2>/dev/null || true; }
has_mgmt() { grep -qs rabbitmq_management "$(ndir "$1")/enabled_plugins"; }
valid_count() { [[ $1 =~ ^[1-9]$ ]] || die "BROKER_NODES=$1: expected a number of nodes in 1..9"; }
valid_index() { [[ $1 =~ ^[1-9]$ && $1 -le $N ]] || die "no node '$1' (the deployment has $N)"; }
# True if one of the processes lives (a zombie does not: some containers never reap them).
alive() {
    local p s
    for p; do s=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) && [ "${s%% *}" != Z ] && return 0; done
    return 1
}
gone_within() { # seconds, pids
    local k
    for ((k = 0; k < $1 * 5; k++)); do alive "${@:2}" || return 0; sleep 0.2; done
    return 1
}

# Prints the pid in file $1 if it lives and its command line has $2; drops a stale file.
# A stale or half-written file is left alone: the beam creates its pid file and then writes
# it, and removing it in between (as this once did) left a starting node without one.
read_pid() {
    local pid=""
    if [ -s "$1" ]; then read -r pid <"$1" || true; fi
    if ! [[ $pid =~ ^[0-9]+$ ]] || ! alive "$pid"; then return 1; fi
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"$2"* ]] && echo "$pid"
}
# The beam writes its pid (RABBITMQ_PID_FILE); launcher.pid is the rabbitmq-server script we
# started ($!), to stop a node that never got as far as writing its pid.
beam_pid() { local n && n=$(name "$1") && read_pid "$(ndir "$1")/rabbitmq.pid" "-imagejobs_node ${n%@*} "; }
launcher_pid() { read_pid "$(ndir "$1")/launcher.pid" rabbitmq-server; }
any_running() { local i; for ((i = 1; i <= N; i++)); do beam_pid "$i" >/dev/null && return 0; done; return 1; }

# N and BASE: those recorded for the deployment, else BROKER_NODES and BROKER_PORT_BASE.
load() {
    N=$(recorded) && N=${N:-${BROKER_NODES:-1}} && valid_count "$N"
    BASE=${BROKER_PORT_BASE:-$DEFAULT_BASE}
    if [ -s "$NODE_DIR/port-base" ] && any_running; then BASE=$(cat "$NODE_DIR/port-base"); fi
    [[ $BASE =~ ^[1-9][0-9]{3,4}$ && $BASE -ge 1024 && $BASE -le 65436 ]] ||
        die "BROKER_PORT_BASE=$BASE: expected a port number in 1024-65436"
}
port_taken() {
    { command -v ss >/dev/null && ss -Htln | awk -v p=":$1" '$4 ~ (p "$") { f = 1 } END { exit !f }'; } ||
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
check_ports() { # node, management (yes/no)
    local w p
    for w in AMQP:0 management:2 Prometheus:3 "Erlang distribution:4"; do
        [ "${w#*:}" = 2 ] && [ "$2" != yes ] && continue
        p=$(port "$1" "${w#*:}")
        ! port_taken "$p" || die "port $p (${w%:*} of node $1) is already in use by another program.
rabbitmq: This checkout's nodes use ports $BASE-$((BASE + 99)); BROKER_PORT_BASE=NNNNN picks another block."
    done
}

# ENVP: `env` that drops the caller's RABBITMQ_* and ERL_*FLAGS (they would redirect our
# nodes), sets our HOME (cookie), an empty RABBITMQ_CONF_ENV_FILE of ours (not
# /etc/rabbitmq/rabbitmq-env.conf), the CLI's ports and a UTF-8 locale for the Elixir CLI.
cli_env() {
    local v
    series_mount && ENVP=(env)
    while read -r v; do
        case $v in RABBITMQ_* | ERL_FLAGS | ERL_AFLAGS | ERL_ZFLAGS | ERL_LIBS) ENVP+=(-u "$v") ;; esac
    done < <(compgen -e)
    ENVP+=(HOME="$HOME_DIR" RABBITMQ_CONF_ENV_FILE="$NODE_DIR/rabbitmq-env.conf"
        RABBITMQ_USE_LONGNAME=false RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        RABBITMQ_CTL_DIST_PORT_MIN=$((BASE + 90)) RABBITMQ_CTL_DIST_PORT_MAX=$((BASE + 99)))
    [[ ${LC_ALL:-${LC_CTYPE:-${LANG:-}}} =~ [Uu][Tt][Ff]-?8 ]] ||
        if locale -a 2>/dev/null | grep -qix 'c\.utf-\{0,1\}8'; then ENVP+=(LC_ALL=C.UTF-8); fi
}
cli() { local t=$1 i=$2 && shift 2 && cli_env && "${ENVP[@]}" "${IN_ROOT[@]}" "$RMQ_BIN/$t" -n "$(name "$i")" "$@"; }

lock() {
    mkdir -p "$NODE_DIR" && exec 9>"$NODE_DIR/.lock"
    flock -w 120 9 || die "another rabbitmq/node.sh is busy with these nodes ($NODE_DIR/.lock)"
}

# Starts node $1 detached (own session, the lock closed) in its directory; $! is the pid of
# rabbitmq-server, the script that stops the beam on TERM.
launch() {
    local d n detach=(nohup)
    d=$(ndir "$1") n=$(name "$1") && cli_env
    if command -v setsid >/dev/null; then detach=(setsid nohup); fi
    ENVP+=(RABBITMQ_NODENAME="$n" RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log"
        RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" RABBITMQ_CONFIG_FILES="$d/conf.d"
        RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" RABBITMQ_PID_FILE="$d/rabbitmq.pid"
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" ERL_CRASH_DUMP="$d/log/erl_crash.dump"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$(port "$1" 0)"
        RABBITMQ_DIST_PORT="$(port "$1" 4)"
        # Distribution on loopback only; the marker lets beam_pid tell our beam from a reused pid.
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -imagejobs_node ${n%@*}")
    exec 8>>"$d/log/startup.log" && printf '\n==== %s: starting %s\n' "$(date '+%F %T')" "$n" >&8
    (cd "$d" && exec 9>&- && exec "${detach[@]}" "${ENVP[@]}" "${IN_ROOT[@]}" "$SERVER" </dev/null >&8 2>&1 8>&-) &
    exec 8>&-
    echo "$!" >"$d/launcher.pid" && LAUNCHED+=("$1")
}
start_failed() { # node, message: show the logs, stop what this run started, fail
    local d log run
    d=$(ndir "$1") log=$(ndir "$1")/log/$(name "$1").log && warn "$2"
    run=$(awk '/^==== .*: starting /{ b = "" } { b = b $0 "\n" } END { printf "%s", b }' "$d/log/startup.log")
    warn "---- first errors and last lines of this start in $d/log/startup.log ----"
    { grep -m 8 '\[error\]' <<<"$run" || true; tail -n 12 <<<"$run"; } >&2
    if [ -s "$log" ]; then warn "---- last lines of $log ----" && tail -n 15 "$log" >&2; fi
    stop_nodes --kill "${LAUNCHED[@]}" >/dev/null 2>&1 || true
    die "could not start node $(name "$1") (logs in $d/log; \`rabbitmq/node.sh reset\` starts afresh)"
}
# Waits, within RABBITMQ_START_TIMEOUT, until the given nodes have booted (await_startup in
# parallel), then until node $1 lists every node whose beam lives as running.
wait_up() {
    local deadline=$((SECONDS + START_TIMEOUT)) i k=0 out n l
    local -a bg=() need=()
    for i; do
        l=$(cat "$(ndir "$i")/launcher.pid" 2>/dev/null || true)
        until beam_pid "$i" >/dev/null; do # the beam writes it once its distribution is up
            alive "${l:-0}" || beam_pid "$i" >/dev/null || start_failed "$i" "node $i exited while starting"
            [ "$SECONDS" -lt "$deadline" ] || start_failed "$i" "node $i did not come up within ${START_TIMEOUT}s"
            sleep 0.2
        done
    done
    for i; do
        k=$((deadline - SECONDS > 1 ? deadline - SECONDS : 1))
        cli rabbitmqctl "$i" -q await_startup -t "$k" >/dev/null 2>&1 & bg+=($!)
    done
    k=0
    for i; do wait "${bg[k++]}" || start_failed "$i" "node $i did not finish booting within ${START_TIMEOUT}s"; done
    [ "$N" -gt 1 ] || return 0 # a single node is its own cluster
    for ((i = 1; i <= N; i++)); do if beam_pid "$i" >/dev/null; then need+=("$(name "$i")"); fi; done
    while :; do
        out=$(cli rabbitmqctl "$1" -q cluster_status --formatter json 2>/dev/null || true)
        out=$(sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' <<<"$out") k=0
        for n in "${need[@]}"; do [[ $out == *"\"$n\""* ]] || k=1; done
        [ "$k" = 1 ] || return 0
        [ "$SECONDS" -lt "$deadline" ] || start_failed "$1" "no one cluster in ${START_TIMEOUT}s (running: ${out:-?})"
        sleep 0.5
    done
}
reap() { # pids: let them end within 30 s, else TERM them, then KILL them
    [ "$#" -gt 0 ] || return 0
    gone_within 30 "$@" && return 0
    warn "still running after 30s, sending TERM to $*" && { kill -TERM "$@" 2>/dev/null || true; }
    gone_within 10 "$@" && return 0
    warn "sending KILL to $*" && { kill -KILL "$@" 2>/dev/null || true; }
    gone_within 5 "$@" || die "cannot stop processes $*"
}
# Stops the given nodes in parallel: `rabbitmqctl stop` (--kill: SIGKILL the beam), TERM
# where that fails or no beam wrote its pid, then reap.
stop_nodes() {
    local kill="" i b l
    local -a pids=() bg=()
    if [ "${1:-}" = --kill ]; then kill=1 && shift; fi
    for i; do
        b=$(beam_pid "$i") || b=""
        l=$(launcher_pid "$i") || l=""
        pids+=(${b:+"$b"} ${l:+"$l"})
        if [ -n "$b" ] && [ -n "$kill" ]; then
            say "killing node $(name "$i") (pid $b)" && kill -KILL "$b"
        elif [ -n "$b" ]; then
            say "stopping node $(name "$i")"
            (cli rabbitmqctl "$i" -q stop -t 30 >/dev/null 2>&1 || kill -TERM "$b" "${l:-$b}" 2>/dev/null || true) &
            bg+=($!)
        elif [ -n "$l" ]; then kill -TERM "$l" 2>/dev/null || true; fi
    done
    [ "${#bg[@]}" -eq 0 ] || wait "${bg[@]}" || true
    reap "${pids[@]}"
    for i; do rm -f "$(ndir "$i")/rabbitmq.pid" "$(ndir "$i")/launcher.pid"; done
}
stop_all() { local -a all && mapfile -t all < <(seq 1 "$N") && stop_nodes "${all[@]}"; }

cmd_start() {
    series_check && { series_installed || cmd_install; }
    check_version && lock
    local want rec i started=$SECONDS mgmt=""
    local -a todo=() all=()
    # Without BROKER_NODES, the deployment that exists (one node when there is none).
    rec=$(recorded) && want=${BROKER_NODES:-${rec:-1}} && valid_count "$want" && load
    if [ -n "$rec" ] && [ "$rec" != "$want" ]; then
        if any_running; then i="is running"; else i=exists; fi
        die "a $rec-node deployment $i in $NODE_DIR, not a $want-node one (BROKER_NODES=$want):
rabbitmq: start it with BROKER_NODES=$rec, or \`rabbitmq/node.sh reset\` first (deletes its data)"
    fi
    for ((i = 1; i <= N; i++)); do
        all+=("$i") && beam_pid "$i" >/dev/null && continue
        stop_nodes "$i" >/dev/null && todo+=("$i") # a launcher whose beam never wrote its pid
    done
    if [ "${#todo[@]}" -eq 0 ]; then
        say "the $N-node deployment is already running"
        [ "${BROKER_PORT_BASE:-$BASE}" = "$BASE" ] || warn "its ports start at $BASE: stop it to change that"
        [[ ${PLUGINS[*]} != *management* ]] || has_mgmt 1 || warn "it has no management: stop it to add it"
        write_env_file && print_deployment && return 0
    fi
    [[ ${PLUGINS[*]} != *management* ]] || mgmt=yes
    for i in "${todo[@]}"; do check_ports "$i" "$mgmt"; done
    write_files "${todo[@]}" && say "starting node(s) ${todo[*]} of $N (data in $NODE_DIR)"
    for i in "${todo[@]}"; do launch "$i"; done
    wait_up "${all[@]}"
    write_env_file && print_deployment && say "started in $((SECONDS - started))s"
}
cmd_start_node() {
    lock && load && valid_index "$1"
    [ -s "$(ndir "$1")/rabbitmq.conf" ] || die "node $1 was never started here: use start"
    if beam_pid "$1" >/dev/null; then say "node $1 ($(name "$1")) is already running" && return 0; fi
    stop_nodes "$1" >/dev/null && check_ports "$1" "$(has_mgmt "$1" && echo yes)"
    say "starting node $1 ($(name "$1"))" && launch "$1" && wait_up "$1"
    say "node $1 is running and in the cluster: $(url "$1")"
}
cmd_status() {
    local i p rc=0
    local -a bg=()
    load
    for ((i = 1; i <= N; i++)); do
        bg[i]=""
        if beam_pid "$i" >/dev/null; then cli rabbitmqctl "$i" -q ping -t 10 >/dev/null 2>&1 & bg[i]=$!; fi
    done
    for ((i = 1; i <= N; i++)); do
        if [ -n "${bg[i]}" ] && wait "${bg[i]}"; then p="is running"
        elif p=$(beam_pid "$i"); then p="does not answer (pid $p)" rc=1
        else p="is not running" rc=1; fi
        say "node $i: $(name "$i") $p  $(url "$i" | masked)"
    done
    say "AMQP_URL=$(all_urls | masked)" && return "$rc"
}
cmd_reset() {
    if [ -d "$NODE_DIR" ]; then
        lock && load && stop_all && series_umount
        case "$NODE_DIR" in */rabbitmq/.node) rm -rf -- "$NODE_DIR" ;; *) die "refusing to delete $NODE_DIR" ;; esac
    fi
    series_umount && say "stopped; $NODE_DIR is deleted"
}
cmd_cli() { # tool, node, args
    load && valid_index "$2"
    [ -s "$HOME_DIR/.erlang.cookie" ] || die "no node was ever started here (no $HOME_DIR/.erlang.cookie)"
    cli "$@"
}

main() {
    local cmd=${1:-}
    [ "$#" -eq 0 ] || shift
    series_select "$cmd"
    case "$cmd" in
        install) cmd_install ;;
        start) cmd_start ;;
        stop) if [ -d "$NODE_DIR" ]; then lock && load && stop_all; fi && series_umount && say "stopped" ;;
        status) cmd_status ;;
        url) load && all_urls ;;
        reset) cmd_reset ;;
        pid) load && valid_index "${1:-}" && { beam_pid "$1" || die "node $1 is not running"; } ;;
        start-node) cmd_start_node "${1:-}" ;;
        stop-node)
            [[ ${2:---kill} == --kill ]] || die "usage: rabbitmq/node.sh stop-node I [--kill]"
            lock && load && valid_index "${1:-}" && stop_nodes ${2:+"$2"} "$1" && say "node $1 is stopped" ;;
        ctl) cmd_cli rabbitmqctl "${BROKER_NODE:-1}" "$@" ;;
        ctl-node) cmd_cli rabbitmqctl "${1:-}" "${@:2}" ;;
        queues | streams | diagnostics) cmd_cli "rabbitmq-$cmd" "${BROKER_NODE:-1}" "$@" ;;
        -h | --help | help) usage ;;
        *) usage >&2 && exit 2 ;;
    esac
}

main "$@"
