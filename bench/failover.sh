#!/usr/bin/env bash
# bench/failover.sh: how long I/O stalls across a failover, and whether any data goes wrong.
#
# In the two-controller lab, duet-mpio (a multipath ALUA host that verifies every byte) runs
# across exactly one event per run:
#   kill        kill -9 of the primary (the survivor takes over by itself; the killed controller
#               is started again by hand after the load and rejoins as secondary);
#   switchover  a planned `duetctl switchover`;
#   stop        SIGTERM of the primary (a clean stop: it hands over first), then, still under
#               load, it is started again and the script waits until it has rejoined (one step
#               of a rolling restart);
#   pause       SIGSTOP of the primary until the survivor serves (past the lease; the survivor
#               fences it), SIGCONT, then it is started again and rejoins, under load.
# The primary role alternates between ctrl-a and ctrl-b as events go. Per mode and event kind:
# n, median / p90 / max of duet-mpio's longest stall, the data integrity counters (must all be
# 0), and in how many events a controller logged a fence (a stop or a switchover must have none).
# Run as root: bench/failover.sh [--mode 1|2|both] ...
source "$(dirname "$0")/lib/common.sh"
source "$BENCH_DIR/lib/lab.sh"

usage() {
    cat <<EOF
usage: bench/failover.sh [options]
  --mode M          1, 2 or both (default both: mode 1, then mode 2)
  --kills N         kill -9 events per mode (default 10)
  --switchovers N   planned switchovers per mode (default 10)
  --stops N         SIGTERM of the primary, restart, rejoin; per mode (default 10)
  --pauses N        SIGSTOP of the primary past its lease, SIGCONT, rejoin; per mode (default 10)
  --before S        seconds of load before the event (default 2)
  --after S         seconds of load after the survivor serves (default 3)
  --qd N            duet-mpio commands in flight (default 8)
  --lease-ms MS     the lab's lease (default: the lab's, 1200)
  --lun-mib N       LUN size in MiB (default 256)
  --out FILE        JSON output (default bench/results/failover-<date>.json)
  --no-build        use the binaries already built
Environment: DUET_BIN_DIR (default build/release).
EOF
}

MODE_ARG=both
KILLS=10
SWITCHOVERS=10
STOPS=10
PAUSES=10
BEFORE=2
AFTER=3
QD=8
LEASE_MS=""
LUN_MIB=256
OUT=""
NO_BUILD=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --mode) MODE_ARG=$2; shift ;;
    --kills) KILLS=$2; shift ;;
    --switchovers) SWITCHOVERS=$2; shift ;;
    --stops) STOPS=$2; shift ;;
    --pauses) PAUSES=$2; shift ;;
    --before) BEFORE=$2; shift ;;
    --after) AFTER=$2; shift ;;
    --qd) QD=$2; shift ;;
    --lease-ms) LEASE_MS=$2; shift ;;
    --lun-mib) LUN_MIB=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) NO_BUILD=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done
case $MODE_ARG in
1 | 2) MODE_LIST=("$MODE_ARG") ;;
both) MODE_LIST=(1 2) ;;
*) die "--mode: 1, 2 or both" ;;
esac
for v in KILLS SWITCHOVERS STOPS PAUSES BEFORE AFTER QD LUN_MIB; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,}: a whole number"
done
[[ -z $LEASE_MS || $LEASE_MS =~ ^[0-9]+$ ]] || die "--lease-ms: milliseconds"
[[ $QD -gt 0 ]] || die "--qd: above 0"
OUT=${OUT:-$(default_out failover)}
# duet-mpio's own limit on the load; it is stopped (SIGTERM, then it verifies) long before.
MPIO_MAX=$((BEFORE + AFTER + 120))

# CPU is not measured here, and the HA events in the logs explain surprises.
export RUST_LOG=${RUST_LOG:-info}

need_root
build_bins
need_bin duetd
need_bin duetctl
need_bin duet-mpio

shm_dir failover WORK
RAW="$WORK/runs.jsonl"
: >"$RAW"
cleanup_hook() { lab_stop; }

now_ms() { date +%s%3N; }

# wait_primary NODE SECONDS: until NODE says it is primary for the LUN. Prints the ms it took
# from EVENT_MS; fails on timeout.
wait_primary() {
    local node=$1 secs=$2 deadline
    deadline=$(($(now_ms) + secs * 1000))
    while (($(now_ms) < deadline)); do
        if [[ $(node_ha "$node") == "primary "* ]]; then
            echo $(($(now_ms) - EVENT_MS))
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# The number of log lines of either controller (its lab log and its restart log) that say it
# fences, or fenced, its peer.
fence_count() {
    cat "$LAB_DIR"/ctrl-a*.log "$LAB_DIR"/ctrl-b*.log 2>/dev/null |
        grep -c -e 'fencing the peer controller' -e 'peer controller fenced' || true
}

# wait_gone PID SECONDS: until PID has exited (or is a zombie).
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        alive "$pid" || return 0
        sleep 0.05
    done
    return 1
}

PRIMARY=ctrl-a
FAILED=0

LAB_BROKEN=0

# one_event MODE KIND N: one duet-mpio run across one event (kill, switchover, stop or pause).
# Sets LAB_BROKEN=1 when the lab does not settle into one primary and one secondary again.
one_event() {
    local mode=$1 kind=$2 n=$3 p=$PRIMARY s out mp rc takeover="" pid="" ok=true note="" node
    local rejoin="" fences_before fences=0
    local -a unplanned=()
    s=$(other_node "$p")
    if ! lab_wait_roles "$p" "$s" 60; then
        say "mode $mode: $p/$s are not primary/secondary before $kind $n"
        LAB_BROKEN=1
        return
    fi
    out="$WORK/mpio-$mode-$kind-$n.json"
    # (The script stops the load with SIGTERM through timeout, which passes it on; duet-mpio then
    # reads back every block, which on a loaded machine takes well over 10 s: the KILL comes only
    # if that hangs.)
    (exec timeout --kill-after=300 $((MPIO_MAX + 60)) "$BIN_DIR/duet-mpio" \
        --portal "127.0.0.1:$LAB_PORT" --portal "127.0.0.2:$LAB_PORT" --target "$LAB_TARGET" \
        --lun "$LAB_LUN" --qd "$QD" --duration "${MPIO_MAX}s" --seed "$RANDOM" --json --quiet \
        >"$out" 2>"$out.err") &
    mp=$!
    track_pid "$mp"
    sleep "$BEFORE"
    alive "$mp" || note="duet-mpio ended before the event"
    fences_before=$(fence_count)
    EVENT_MS=$(now_ms)
    case $kind in
    kill)
        pid=$(node_pid "$p")
        if [[ -n $pid ]]; then
            kill -KILL "$pid"
        else
            note="no pid for $p"
        fi
        ;;
    switchover)
        if ! timeout 15 "$BIN_DIR/duetctl" --socket "$LAB_DIR/$p.sock" switchover >"$out.switch" 2>&1; then
            note="duetctl switchover failed: $(tr '\n' ' ' <"$out.switch")"
        fi
        ;;
    stop | pause)
        pid=$(node_pid "$p")
        if [[ -z $pid ]]; then
            note="no pid for $p"
        elif [[ $kind == stop ]]; then
            kill -TERM "$pid"
        else
            kill -STOP "$pid"
        fi
        ;;
    esac
    if [[ -z $note ]]; then
        takeover=$(wait_primary "$s" 60) || note="$s did not become primary within 60 s"
    fi
    if [[ $kind == stop || $kind == pause ]] && [[ -n $pid ]]; then
        # A paused primary is woken (its peer fenced it before serving: it is gone by now);
        # a stopped one exits by itself once the hand-over is done. Either is started again
        # and must rejoin as secondary while the load runs.
        [[ $kind == pause ]] && { kill -CONT "$pid" 2>/dev/null || true; }
        if ! wait_gone "$pid" 15; then
            [[ $kind == stop ]] && note="${note:+$note; }$p did not exit within 15 s of SIGTERM"
        fi
        [[ -z $(node_pid "$p") ]] && lab_restart_node "$p"
        if lab_wait_roles "$s" "$p" 60; then
            rejoin=$(($(now_ms) - EVENT_MS))
        else
            note="${note:+$note; }$p did not rejoin as secondary within 60 s"
        fi
    fi
    [[ -z $note ]] && sleep "$AFTER"
    # Stop the load; duet-mpio then verifies every block and prints its report.
    kill -TERM "$mp" 2>/dev/null || true
    if wait "$mp"; then rc=0; else rc=$?; fi
    # Start again whatever is gone: the controller we killed, and any controller that died
    # without being killed by us (fenced by its peer, crashed): that is reported.
    for node in "$p" "$s"; do
        [[ -n $(node_pid "$node") ]] && continue
        if [[ ($kind != kill && $kind != pause) || $node != "$p" ]]; then
            unplanned+=("$node")
            say "  WARNING: $node died during the $kind (fenced by its peer?); see $LAB_DIR/$node*.log"
        fi
        lab_restart_node "$node"
    done
    if lab_wait_roles "$s" "$p" 60; then
        PRIMARY=$s
    elif lab_wait_roles "$p" "$s" 5; then
        note="${note:+$note; }the primary role did not move"
    else
        note="${note:+$note; }the lab did not settle into one primary and one secondary"
        LAB_BROKEN=1
    fi
    fences=$(($(fence_count) - fences_before))
    if [[ -n $note || $(python3 "$REPORT" field ops <"$out") == "" ]]; then
        ok=false
    fi
    local rec
    rec=$(python3 "$REPORT" record --json "$out" mode="$mode" event="$kind" n="$n" "from=$p" "to=$s" \
        rc="$rc" takeover_ms="${takeover:-null}" rejoin_ms="${rejoin:-null}" ok="$ok" "note=$note" \
        lease_ms="${LEASE_MS:-1200}" fence_lines="$fences" fenced="$([[ $fences -gt 0 ]] && echo true || echo false)" \
        "unplanned_deaths=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${unplanned[@]}")")
    echo "$rec" >>"$RAW"
    python3 - "$rec" "$mode" "$kind" "$n" >&2 <<'EOF'
import json, sys
r, mode, kind, n = json.loads(sys.argv[1]), *sys.argv[2:]
bad = {k: r.get(k) for k in ("errors", "stale_reads", "corrupt_reads", "lost_writes") if r.get(k)}
print(f"  mode {mode} {kind} {n} {r['from']}->{r['to']}: "
      + (f"takeover {r.get('takeover_ms')} ms, longest stall {r.get('longest_stall_ms')} ms, "
         f"{r.get('ops')} ops"
         + (f", rejoined after {r.get('rejoin_ms')} ms" if r.get("rejoin_ms") is not None else "")
         + (", FENCE logged" if r.get("fenced") else "")
         if r.get("ok") else f"FAILED: {r.get('note') or 'no report'}")
      + (f", {bad}" if bad else ""))
EOF
    if [[ $ok != true ]]; then
        FAILED=$((FAILED + 1))
        show_tail "$out.err" 5
    fi
}

extra=()
[[ -n $LEASE_MS ]] && extra=(--lease-ms "$LEASE_MS")
for mode in "${MODE_LIST[@]}"; do
    mkdir -p "$WORK/mode$mode"
    lab_start "$mode" "$WORK/mode$mode" "$LUN_MIB" "${extra[@]}"
    PRIMARY=ctrl-a
    # Every event moves the primary role to the other controller, so the kills hit ctrl-a,
    # ctrl-b, ctrl-a, ... and the switchovers start from either controller in turn.
    LAB_BROKEN=0
    for ((i = 1; i <= KILLS && !LAB_BROKEN; i++)); do
        say "mode $mode: kill -9 of the primary ($PRIMARY), $i/$KILLS"
        one_event "$mode" kill "$i"
    done
    for ((i = 1; i <= SWITCHOVERS && !LAB_BROKEN; i++)); do
        say "mode $mode: planned switchover from $PRIMARY, $i/$SWITCHOVERS"
        one_event "$mode" switchover "$i"
    done
    for ((i = 1; i <= STOPS && !LAB_BROKEN; i++)); do
        say "mode $mode: SIGTERM of the primary ($PRIMARY), restart, rejoin, $i/$STOPS"
        one_event "$mode" stop "$i"
    done
    for ((i = 1; i <= PAUSES && !LAB_BROKEN; i++)); do
        say "mode $mode: SIGSTOP of the primary ($PRIMARY) past its lease, SIGCONT, rejoin, $i/$PAUSES"
        one_event "$mode" pause "$i"
    done
    if ((LAB_BROKEN)); then
        FAILED=$((FAILED + 1))
        say "mode $mode: the lab is stuck; its remaining events are skipped (logs: $LAB_DIR)"
        show_tail "$LAB_DIR/lab.log" 20
    fi
    lab_stop
done

machine_facts >"$WORK/facts.json"
python3 "$REPORT" kv "modes=[$(IFS=,; echo "${MODE_LIST[*]}")]" kills="$KILLS" switchovers="$SWITCHOVERS" \
    stops="$STOPS" pauses="$PAUSES" \
    before_s="$BEFORE" after_s="$AFTER" qd="$QD" lease_ms="${LEASE_MS:-1200}" lun_mib="$LUN_MIB" \
    >"$WORK/params.json"
mkdir -p "$(dirname "$OUT")"
python3 "$REPORT" failover "$RAW" "$WORK/facts.json" "$WORK/params.json" "$OUT"
say "results: $OUT"
bad=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(1 for c in d["checks"] if c["met"] is False))' "$OUT")
if [[ $bad -gt 0 ]]; then
    say "CHECKS NOT MET (data integrity, or a fence in a planned hand-over) in $bad row(s)"
    exit 1
fi
if [[ $FAILED -gt 0 ]]; then
    say "$FAILED run(s) failed"
    exit 1
fi
