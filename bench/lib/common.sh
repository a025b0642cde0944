# Shared helpers of the benchmark scripts (sourced, not run).
#
# Every process a script starts is registered with `track_pid`; every file or directory with
# `track_path`. The EXIT trap stops the processes by PID (SIGTERM, then SIGKILL after a grace
# period) and removes the paths. Progress goes to stderr through `say`.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
REPORT="$BENCH_DIR/lib/report.py"
# Binaries: build/release (the workspace's target-dir), unless DUET_BIN_DIR says otherwise.
BIN_DIR=${DUET_BIN_DIR:-$ROOT/build/release}
SCRIPT=$(basename "$0" .sh)

TRACKED_PIDS=()
TRACKED_PATHS=()

say() { printf '[%s %s] %s\n' "$SCRIPT" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# The start time of process $1 (clock ticks after boot), or nothing if it is gone. A PID plus its
# start time names one process: a PID recycled by the system does not match.
proc_start() {
    sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20
}

track_pid() { TRACKED_PIDS+=("$1:$(proc_start "$1")"); }
track_path() { TRACKED_PATHS+=("$1"); }

# A fresh, tracked work directory NAME.XXXXXX under BASE, meant to be on a disk: O_DIRECT on tmpfs
# or ramfs has no device behind it, which is said with a warning naming ENV (the variable that
# chooses BASE). Sets WORK and FS_TYPE.
disk_workdir() {
    local base=$1 name=$2 env=$3
    mkdir -p "$base"
    WORK=$(mktemp -d "$base/$name.XXXXXX") || die "cannot create a directory in $base"
    track_path "$WORK"
    FS_TYPE=$(stat -f -c %T "$WORK")
    case $FS_TYPE in
    tmpfs | ramfs) say "warning: $WORK is on $FS_TYPE: no device behind it (set $env to a disk)" ;;
    esac
}

# Whether process $1 is alive (and not a zombie).
alive() {
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

# stop_pid PID [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL. Only for PIDs we started.
stop_pid() {
    local pid=$1 grace=${2:-10} i
    alive "$pid" || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        say "pid $pid did not stop on SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Extra cleanup a script can hook in (runs first).
cleanup_hook() { :; }

cleanup() {
    local rc=$? i pid start
    trap - EXIT INT TERM
    [[ $rc -ne 0 ]] && say "exiting (status $rc): stopping what was started, removing work files"
    cleanup_hook || true
    for ((i = ${#TRACKED_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${TRACKED_PIDS[i]%%:*}
        start=${TRACKED_PIDS[i]#*:}
        # Only the very process we started (not one that got its PID since).
        if [[ -n $start && $(proc_start "$pid") == "$start" ]]; then
            stop_pid "$pid" 5
        else
            wait "$pid" 2>/dev/null || true
        fi
    done
    for i in "${TRACKED_PATHS[@]}"; do
        if [[ ${BENCH_KEEP:-0} == 1 ]]; then
            say "BENCH_KEEP=1: kept $i (logs, configurations, raw runs); remove it by hand"
        elif [[ -n $i && $i != / ]]; then
            rm -rf -- "$i"
        fi
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root (tgt, /dev/shm, process control)"
}

# Builds duetd, duetctl, duet-mpio and (when it exists) duet-load.
build_bins() {
    if [[ ${NO_BUILD:-0} == 1 ]]; then
        say "--no-build: using binaries in $BIN_DIR"
        return
    fi
    say "building: cargo build --release -p duet-target -p duet-hosts --bins"
    (cd "$ROOT" && cargo build --release -p duet-target -p duet-hosts --bins) >&2 ||
        die "build failed"
}

# The duet-load binary: $DUET_LOAD, else BIN_DIR, else build-load/release.
find_duet_load() {
    local c
    for c in "${DUET_LOAD:-}" "$BIN_DIR/duet-load" "$ROOT/build-load/release/duet-load"; do
        if [[ -n $c && -x $c ]]; then
            echo "$c"
            return
        fi
    done
    die "duet-load not found (looked in $BIN_DIR and $ROOT/build-load/release; or set DUET_LOAD)"
}

need_bin() {
    [[ -x $BIN_DIR/$1 ]] || die "$BIN_DIR/$1 missing (build it, or drop --no-build)"
}

ensure_tgt() {
    if ! command -v tgtd >/dev/null || ! command -v tgtadm >/dev/null; then
        say "installing tgt"
        apt-get install -y tgt >&2 || die "cannot install tgt"
    fi
}

ensure_iscsi_perf() {
    if ! command -v iscsi-perf >/dev/null; then
        say "installing libiscsi-bin (iscsi-perf)"
        apt-get install -y libiscsi-bin >&2 || die "cannot install libiscsi-bin"
    fi
}

# A TCP port nobody listens on (any address), from a random spot in 20000-39999.
pick_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 20000))
        if [[ -z $(ss -Htln "sport = :$p" 2>/dev/null) ]]; then
            echo "$p"
            return
        fi
    done
    die "no free TCP port found"
}

# wait_port HOST PORT SECONDS [PID]: until something accepts on HOST:PORT; fails early if PID dies.
wait_port() {
    local host=$1 port=$2 secs=$3 pid=${4:-} i
    for ((i = 0; i < secs * 10; i++)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            return 0
        fi
        if [[ -n $pid ]] && ! alive "$pid"; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# direct_fds PID FILE / plain_fds PID FILE: how many of the process's descriptors name FILE with
# O_DIRECT (octal 040000 in /proc/PID/fdinfo's flags) / without it.
fds_of() {
    local pid=$1 file=$2 want=$3 fd n=0 flags has
    for fd in /proc/"$pid"/fd/*; do
        [[ $(readlink "$fd" 2>/dev/null) == "$file" ]] || continue
        flags=$(awk '/^flags:/ { print $2 }' "/proc/$pid/fdinfo/${fd##*/}" 2>/dev/null)
        [[ $flags =~ ^[0-7]+$ ]] || continue
        has=$(((8#$flags & 8#040000) != 0 ? 1 : 0))
        [[ $has == "$want" ]] && n=$((n + 1))
    done
    echo "$n"
}
direct_fds() { fds_of "$1" "$2" 1; }
plain_fds() { fds_of "$1" "$2" 0; }

# CPU seconds (user + system, all threads) a process has used so far.
CLK_TCK=$(getconf CLK_TCK)
cpu_seconds() {
    local f
    f=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return
    }
    # After the command name: field 1 is state (stat field 3), utime/stime are stat fields 14/15.
    awk -v tck="$CLK_TCK" '{ printf "%.3f\n", ($12 + $13) / tck }' <<<"$f"
}

# A file of random data, SIZE MiB, written once.
make_random_file() {
    local path=$1 mib=$2
    say "filling $path with $mib MiB of random data"
    dd if=/dev/urandom of="$path" bs=1M count="$mib" status=none iflag=fullblock ||
        die "cannot write $path"
}

# Machine facts as JSON (stdout).
machine_facts() {
    local rev dirty duetd_ver tgt_ver cpu
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | head -1)
    [[ -n $dirty ]] && rev="$rev+dirty"
    duetd_ver=$("$BIN_DIR/duetd" --version 2>/dev/null || echo unknown)
    tgt_ver=$(tgtd --version 2>/dev/null | head -1 || true)
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    python3 "$REPORT" kv \
        "date=$(date -Is)" "host=$(hostname)" "nproc=$(nproc)" "kernel=$(uname -r)" \
        "cpu_model=$cpu" "duetd_git_rev=$rev" "duetd_version=$duetd_ver" \
        "tgtd_version=${tgt_ver:-not installed}" "clk_tck=$CLK_TCK" \
        "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" "qemu_guests=$(pgrep -c -f qemu-system || true)"
}

# Default output file: bench/results/NAME-<date>.json.
default_out() {
    mkdir -p "$BENCH_DIR/results"
    echo "$BENCH_DIR/results/$1-$(date +%Y%m%d-%H%M%S).json"
}

# shm_dir NAME VAR: a fresh directory on tmpfs into variable VAR, removed at exit. (Not through
# $(...): the directory must be tracked by this shell.)
shm_dir() {
    local d
    d=$(mktemp -d "/dev/shm/duet-bench-$1.XXXXXX") || die "cannot create a directory in /dev/shm"
    track_path "$d"
    printf -v "$2" '%s' "$d"
}

# run_load OUTFILE ARGS... &: duet-load under a timeout, its JSON to OUTFILE, stderr to OUTFILE.err.
# Start it in the background only: it execs, so $! is the timeout process (which passes SIGTERM
# on to duet-load). Uses the globals DUET_LOAD_BIN, DURATION, WARMUP.
# CLIENT_TASKSET (an array, empty by default) prefixes the client, e.g. (taskset -c 1).
CLIENT_TASKSET=()
run_load() {
    local out=$1
    shift
    exec timeout --kill-after=5 $((DURATION + WARMUP + 30)) "${CLIENT_TASKSET[@]}" \
        "$DUET_LOAD_BIN" "$@" --duration "${DURATION}s" --warmup "${WARMUP}s" --json --quiet \
        >"$out" 2>"$out.err"
}

# Sum of cpu_seconds over several PIDs.
cpu_sum() {
    local pid total=0
    for pid in "$@"; do
        total=$(awk -v a="$total" -v b="$(cpu_seconds "$pid")" 'BEGIN { printf "%.3f", a + b }')
    done
    echo "$total"
}

RUN_NO=0
# load_run RAW "PIDS" PORTAL IQN LUN SPEC SESSIONS [K=V...]
#   One duet-load run with SPEC = "name|label|op|pattern|block size|qd"; measures the CPU of the
#   target PIDS (user+system, summed) over the measured interval (after the warm-up, for the
#   duration), appends a JSON record (the client's JSON + K=V + target_cpu_s, rc, ok) to RAW and
#   prints a progress line. Returns 1 when the run failed. Needs WORK, DUET_LOAD_BIN, DURATION,
#   WARMUP.
load_run() {
    local raw=$1 pids=$2 portal=$3 iqn=$4 lun=$5 spec=$6 sessions=$7
    shift 7
    local name label op pattern bs qd out lp c1 c2 rc rec
    IFS='|' read -r name label op pattern bs qd <<<"$spec"
    RUN_NO=$((RUN_NO + 1))
    out="$WORK/run-$RUN_NO.json"
    run_load "$out" --portal "$portal" --target "$iqn" --lun "$lun" --op "$op" --pattern "$pattern" \
        --block-size "$bs" --qd "$qd" --sessions "$sessions" &
    lp=$!
    track_pid "$lp"
    sleep "$WARMUP"
    # shellcheck disable=SC2086 # PIDS is a list
    c1=$(cpu_sum $pids)
    sleep "$DURATION"
    # shellcheck disable=SC2086
    c2=$(cpu_sum $pids)
    if wait "$lp"; then rc=0; else rc=$?; fi
    rec=$(python3 "$REPORT" record --json "$out" client=duet-load workload="$name" "label=$label" \
        sessions="$sessions" rc="$rc" block_size="$bs" qd="$qd" "portal=$portal" "$@" \
        target_cpu_s="$(awk -v a="$c1" -v b="$c2" 'BEGIN { printf "%.3f", b - a }')")
    echo "$rec" >>"$raw"
    say "  $*: $(python3 "$REPORT" brief <<<"$rec")"
    if [[ $rc -ne 0 ]] || ! grep -q '"ok": true' <<<"$rec"; then
        show_tail "$out.err" 5
        return 1
    fi
    return 0
}

# Keeps the last N lines of a file on stderr (for failure reports).
show_tail() {
    [[ -s $1 ]] && tail -n "${2:-5}" "$1" | sed 's/^/    | /' >&2
    return 0
}

# A duetctl query with a short timeout; prints JSON or nothing.
duetctl_json() {
    local sock=$1
    shift
    timeout 5 "$BIN_DIR/duetctl" --socket "$sock" --json "$@" 2>/dev/null || true
}

# start_tgtd IMAGE [BSTYPE]: tgtd on 127.0.0.1 with a control port of its own (-C, so that a
# system tgtd is left alone), target $TGT_IQN with LUN 1 on IMAGE (backing store BSTYPE, tgt's
# default if empty). Sets TGT_CTRL, PORT_T, TGT_PID and cleanup_hook; needs $WORK and $TGT_IQN.
tgtadm_() { tgtadm -C "$TGT_CTRL" "$@"; }
start_tgtd() {
    local img=$1 bstype=${2:-} c
    TGT_CTRL=""
    for _ in $(seq 50); do
        c=$((1000 + RANDOM % 9000))
        if [[ ! -e /var/run/tgtd/socket.$c && ! -e /var/run/tgtd/socket.$c.lock ]]; then
            TGT_CTRL=$c
            break
        fi
    done
    [[ -n $TGT_CTRL ]] || die "no free tgtd control port"
    PORT_T=$(pick_port)
    cleanup_hook() {
        if [[ -n ${TGT_PID:-} ]] && alive "$TGT_PID"; then
            # tgtd ignores SIGTERM while it has targets: take them down, then the daemon.
            timeout 5 tgtadm -C "$TGT_CTRL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1
            timeout 5 tgtadm -C "$TGT_CTRL" --op delete --mode system >/dev/null 2>&1
        fi
        if [[ -n ${TGT_CTRL:-} ]]; then
            rm -f "/var/run/tgtd/socket.$TGT_CTRL" "/var/run/tgtd/socket.$TGT_CTRL.lock"
        fi
        return 0
    }
    say "starting tgtd on 127.0.0.1:$PORT_T (control port $TGT_CTRL${bstype:+, --bstype $bstype})"
    "${TARGET_TASKSET[@]}" tgtd -f -C "$TGT_CTRL" --iscsi "portal=127.0.0.1:$PORT_T" >"$WORK/tgtd.log" 2>&1 &
    TGT_PID=$!
    track_pid "$TGT_PID"
    for _ in $(seq 100); do
        tgtadm_ --op show --mode sys >/dev/null 2>&1 && break
        alive "$TGT_PID" || break
        sleep 0.1
    done
    {
        tgtadm_ --lld iscsi --op new --mode target --tid 1 -T "$TGT_IQN" &&
            tgtadm_ --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 ${bstype:+--bstype "$bstype"} -b "$img" &&
            tgtadm_ --lld iscsi --op bind --mode target --tid 1 -I ALL
    } >&2 || {
        show_tail "$WORK/tgtd.log" 20
        die "tgtd setup failed${bstype:+ ($bstype backing store)}"
    }
    wait_port 127.0.0.1 "$PORT_T" 30 "$TGT_PID" || {
        show_tail "$WORK/tgtd.log" 20
        die "tgtd did not start"
    }
}

# write_duetd_config FILE PORT WRITER [LUN_LINE...]: a one-LUN duetd configuration for the
# benchmarks (target $DUET_IQN, LUN 0 on $WORK/duet.img, 512-byte blocks, no pings), with the
# extra LUN lines given (e.g. `direct = true`).
write_duetd_config() {
    local file=$1 port=$2 writer=$3 l
    shift 3
    {
        cat <<EOF
# Written by $writer.
ping_timeout = 0

[portal_group.pg0]
listen = ["127.0.0.1:$port"]
discovery_auth_group = "none"

[[target]]
name = "$DUET_IQN"
portal_group = "pg0"
auth_group = "none"

[[target.lun]]
number = 0
path = "$WORK/duet.img"
block_size = 512
create = false
EOF
        for l in "$@"; do printf '%s\n' "$l"; done
    } >"$file"
}
