# shellcheck shell=bash
# Sourced by rabbitmq/node.sh: which RabbitMQ its nodes run (RABBITMQ_SERIES), and where.
#   3.10 (default)  Debian 12's rabbitmq-server package on the host (/usr/lib/rabbitmq/bin)
#   4.0             Debian 13's, in a root of the project's own, rabbitmq/.series/4.0/root:
#                   debootstrap of trixie and `apt-get install rabbitmq-server` inside it,
#                   from the Debian mirror of the host's apt sources (RABBITMQ_SERIES_MIRROR
#                   overrides it), once; nothing on the host changes but the debootstrap
#                   package. Its `installed` file, written last, marks a finished install.
#                   The nodes and the CLI run there under chroot (root only), with
#                   rabbitmq/.node bind-mounted at its own path and /proc mounted, so every
#                   path node.sh passes means the same inside; `stop` and `reset` unmount.
# A node folder records its series in rabbitmq/.node/series (none: 3.10). RabbitMQ 4.0
# refuses a data folder of 3.10 (required feature flags not enabled) and 3.10 one of 4.0:
# `start` of another series refuses at once. Every other command uses the folder's series.
SERIES=3.10 SERIES_DIR="" SERIES_ROOT="" IN_ROOT=()
SERIES_ALL=$SCRIPT_DIR/.series

series_recorded() {
    if [ -s "$NODE_DIR/series" ]; then cat "$NODE_DIR/series"; elif [ -d "$NODE_DIR/node-1" ]; then echo 3.10; fi
}
series_select() { # command: `start` and `install` want RABBITMQ_SERIES, the rest the folder's
    SERIES=${RABBITMQ_SERIES:-3.10}
    case $1 in start | install) ;; *) SERIES=$(series_recorded) && SERIES=${SERIES:-${RABBITMQ_SERIES:-3.10}} ;; esac
    case $SERIES in
        3.10) return 0 ;;
        4.0) SERIES_DIR=$SERIES_ALL/$SERIES SERIES_ROOT=$SERIES_ALL/$SERIES/root ;;
        *) die "RABBITMQ_SERIES=$SERIES: expected 3.10 (Debian 12's RabbitMQ, the default) or 4.0 (Debian 13's)" ;;
    esac
    RMQ_BIN=/usr/lib/rabbitmq/bin SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
    IN_ROOT=(env PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 chroot "$SERIES_ROOT")
}
series_installed() { if [ -n "$SERIES_ROOT" ]; then [ -s "$SERIES_DIR/installed" ]; else [ -x "$SERVER" ]; fi; }
# Refuses to start a node folder made by another series, before anything waits for a node.
series_check() {
    local rec state=stopped
    rec=$(series_recorded)
    [ -n "$rec" ] && [ "$rec" != "$SERIES" ] || return 0
    if any_running; then state=running; fi
    die "rabbitmq/.node holds a RabbitMQ $rec deployment ($state), not $SERIES (RABBITMQ_SERIES${RABBITMQ_SERIES:+=}${RABBITMQ_SERIES:- unset}):
rabbitmq: RabbitMQ does not boot a data folder of another series. Start it with RABBITMQ_SERIES=$rec,
rabbitmq: or delete its data first: \`make broker-reset\` (rabbitmq/node.sh reset), then start again."
}
series_need_root() { [ "$(id -u)" -eq 0 ] || die "RABBITMQ_SERIES=$SERIES runs RabbitMQ under chroot: run as root"; }

# The URI of the host's apt source for suite $1 (e.g. bookworm, bookworm-security).
series_source() {
    # shellcheck disable=SC2016 # apt's own $(FIELD) syntax
    apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
        awk -v s="$1" '$2 == s { sub(/\/$/, "", $1); print $1; exit }'
}
series_install() {
    local mark=$SERIES_DIR/installed log=$SERIES_DIR/install.log host mirror security v p
    series_need_root && mkdir -p "$SERIES_DIR" && exec 7>"$SERIES_DIR/.lock"
    flock -w 900 7 || die "another install of RabbitMQ $SERIES is busy ($SERIES_DIR/.lock)"
    if [ -s "$mark" ]; then exec 7>&- && return 0; fi
    series_umount
    if [ -e "$SERIES_ROOT" ]; then
        say "removing the half-finished install in $SERIES_ROOT"
        rm -rf --one-file-system -- "$SERIES_ROOT" || die "could not remove $SERIES_ROOT"
    fi
    # shellcheck source=scripts/apt.sh
    . "$SCRIPT_DIR/../scripts/apt.sh"
    apt_ensure debootstrap debootstrap >&2 || die "RABBITMQ_SERIES=$SERIES needs debootstrap"
    host=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null)
    mirror=${RABBITMQ_SERIES_MIRROR:-$(series_source "$host")}
    security=$(series_source "$host-security")
    [ -n "$mirror" ] || die "cannot tell the Debian mirror from the host's apt sources (suite '$host'):
rabbitmq: set RABBITMQ_SERIES_MIRROR to a Debian mirror's URL (the one holding dists/trixie)"
    say "installing RabbitMQ $SERIES: Debian 13 (trixie) into $SERIES_ROOT by debootstrap, then its"
    say "rabbitmq-server package (about two minutes, once; log: $log)"
    {
        debootstrap --variant=minbase trixie "$SERIES_ROOT" "$mirror" &&
            printf '#!/bin/sh\nexit 101\n' >"$SERIES_ROOT/usr/sbin/policy-rc.d" &&
            chmod 755 "$SERIES_ROOT/usr/sbin/policy-rc.d" &&
            { echo "deb $mirror trixie main" && echo "deb $mirror trixie-updates main" &&
                if [ -n "$security" ]; then echo "deb $security trixie-security main"; fi; } \
                >"$SERIES_ROOT/etc/apt/sources.list" &&
            { grep -qs localhost "$SERIES_ROOT/etc/hosts" || printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >>"$SERIES_ROOT/etc/hosts"; } &&
            "${IN_ROOT[@]}" apt-get update &&
            "${IN_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server &&
            "${IN_ROOT[@]}" apt-get clean
    } >"$log" 2>&1 || { tail -n 25 "$log" >&2 && die "the install of RabbitMQ $SERIES failed (log: $log); starting again retries it"; }
    # shellcheck disable=SC2016 # dpkg-query's own ${Field} syntax
    v=$("${IN_ROOT[@]}" dpkg-query -W -f '${Version}' rabbitmq-server)
    [[ $v == "$SERIES".* ]] || die "Debian 13's rabbitmq-server is $v, not $SERIES.x (see $log)"
    for p in "${PLUGINS[@]}"; do
        compgen -G "$SERIES_ROOT$RMQ_BIN/../lib/rabbitmq_server-${v%%-*}/plugins/$p-*" >/dev/null || die "RabbitMQ $v in $SERIES_ROOT lacks the plugin $p"
    done
    echo "rabbitmq-server $v (Debian 13) from $mirror" >"$mark.tmp" && mv "$mark.tmp" "$mark"
    exec 7>&- && say "RabbitMQ $v is installed in $SERIES_ROOT"
}

# Mounts /proc and rabbitmq/.node inside the root, once (a lock: CLI calls run in parallel).
# A bind mount of a folder since deleted (rm -rf rabbitmq/.node) is replaced.
series_mount() {
    [ -n "$SERIES_ROOT" ] || return 0
    series_need_root
    (
        flock -w 30 7 || exit 1
        m=$SERIES_ROOT/proc && { mountpoint -q "$m" || mount -t proc proc "$m"; } || exit 1
        m=$SERIES_ROOT$NODE_DIR
        if mountpoint -q "$m" && [ "$(stat -c %d:%i "$m")" != "$(stat -c %d:%i "$NODE_DIR")" ]; then umount -l "$m"; fi
        mountpoint -q "$m" || { mkdir -p "$m" && mount --bind "$NODE_DIR" "$m"; }
    ) 7>"$SERIES_DIR/.mount.lock" || die "could not mount /proc and $NODE_DIR inside $SERIES_ROOT"
}
# Unmounts whatever is mounted under any series' root (ours, or a killed debootstrap's),
# deepest first: nothing must lead from there back into the host when a root is deleted.
series_umount() {
    [ -d "$SERIES_ALL" ] && [ "$(id -u)" -eq 0 ] || return 0
    local m
    while read -r m; do
        umount -l "$m" || warn "could not unmount $m"
    done < <(awk -v r="$SERIES_ALL/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}
