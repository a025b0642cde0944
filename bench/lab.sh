#!/usr/bin/env bash
# bench/lab.sh: the two-controller lab, direct path (ctrl-a, primary) against the path through
# the secondary (ctrl-b), in ha_mode 2 (ctrl-b forwards every command to ctrl-a over the HA link)
# and ha_mode 1 (ctrl-b does the I/O itself on the shared file). One session, duet-load.
# Markdown table on stdout, every run in a JSON file. Run as root: bench/lab.sh [--quick] ...
# With --soak S: instead, load through both controllers at once for S seconds per mode and count
# HA link downs and takeovers (there must be none; the exit status is 1 otherwise).
source "$(dirname "$0")/lib/common.sh"
source "$BENCH_DIR/lib/lab.sh"

usage() {
    cat <<EOF
usage: bench/lab.sh [options]
  --modes L      HA modes, comma-separated, in this order (default 2,1)
  --duration S   seconds measured per run (default 8)
  --warmup S     seconds of warm-up per run, not measured (default 1)
  --rounds R     runs per path and workload, alternating; medians reported (default 2)
  --quick        --duration 3 --rounds 1
  --only REGEX   only workloads whose name matches
  --lun-mib N    LUN size in MiB (default 1024)
  --out FILE     JSON output (default bench/results/lab-<date>.json)
  --no-build     use the binaries already built
  --soak S       the heartbeat soak instead: for S seconds per mode, a workload (--soak-workload,
                 default 4k-randwrite-qd32) with --sessions sessions through ctrl-a AND through
                 ctrl-b at once; reports the HA link downs and takeovers of both (must be 0)
  --sessions N   sessions per controller in the soak (default 4)
  --soak-workload NAME  the soak's workload (one of those below)
  --hog N        during the soak, N busy-looping processes beside the lab (default 0)
Environment: DUET_BIN_DIR (default build/release), DUET_LOAD (a duet-load binary).
Workloads: ${WORKLOADS[*]%%|*}
EOF
}

# name|label|op|pattern|block size|queue depth
WORKLOADS=(
    "4k-randread-qd32|4K random read QD32|read|random|4096|32"
    "4k-randwrite-qd32|4K random write QD32|write|random|4096|32"
    "4k-randread-qd1|4K random read QD1|read|random|4096|1"
    "4k-randwrite-qd1|4K random write QD1|write|random|4096|1"
    "128k-seqread-qd32|128K sequential read QD32|read|seq|131072|32"
    "128k-seqwrite-qd32|128K sequential write QD32|write|seq|131072|32"
)

MODES="2,1"
DURATION=8
WARMUP=1
ROUNDS=2
ONLY=""
LUN_MIB=1024
OUT=""
NO_BUILD=0
SOAK=0
SESSIONS=4
SOAK_WORKLOAD=4k-randwrite-qd32
HOG=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --modes) MODES=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --quick) DURATION=3; ROUNDS=1 ;;
    --only) ONLY=$2; shift ;;
    --lun-mib) LUN_MIB=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) NO_BUILD=1 ;;
    --soak) SOAK=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --soak-workload) SOAK_WORKLOAD=$2; shift ;;
    --hog) HOG=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done
[[ $MODES =~ ^[012](,[012])*$ ]] || die "--modes: e.g. 2,1"
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "--duration: whole seconds above 0"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "--warmup: whole seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "--rounds: a number above 0"
[[ $LUN_MIB =~ ^[0-9]+$ && $LUN_MIB -ge 16 ]] || die "--lun-mib: at least 16"
[[ $SOAK =~ ^[0-9]+$ ]] || die "--soak: whole seconds"
[[ $SESSIONS =~ ^[0-9]+$ && $SESSIONS -gt 0 ]] || die "--sessions: a number above 0"
[[ $HOG =~ ^[0-9]+$ ]] || die "--hog: a number"
IFS=, read -r -a MODE_LIST <<<"$MODES"
if ((SOAK > 0)); then
    OUT=${OUT:-$(default_out lab-soak)}
else
    OUT=${OUT:-$(default_out lab)}
fi

need_root
build_bins
need_bin duetd
need_bin duetctl
DUET_LOAD_BIN=$(find_duet_load)
say "load client: $DUET_LOAD_BIN"

selected=()
for spec in "${WORKLOADS[@]}"; do
    if [[ -z $ONLY || ${spec%%|*} =~ $ONLY ]]; then selected+=("$spec"); fi
done
[[ ${#selected[@]} -gt 0 ]] || die "--only $ONLY matches no workload (${WORKLOADS[*]%%|*})"

# On the disk's file system, not tmpfs: every LUN of a pair is opened with O_DIRECT, and O_DIRECT
# on tmpfs has no device behind it. DUET_LAB_DIR chooses another directory.
LAB_BASE=${DUET_LAB_DIR:-$ROOT/build}
disk_workdir "$LAB_BASE" duet-bench-lab DUET_LAB_DIR
say "lab directories in $WORK ($FS_TYPE)"
RAW="$WORK/runs.jsonl"
: >"$RAW"
cleanup_hook() { lab_stop; }

# One random image, copied into each lab directory (the lab keeps a file that is big enough).
make_random_file "$WORK/image" "$LUN_MIB"

# "closed silent takeovers" of a controller from `duetctl ha --json` ("? ? ?" when it does not
# answer).
ha_counters() {
    duetctl_json "$LAB_DIR/$1.sock" ha | python3 -c '
import json, sys
try:
    c = json.load(sys.stdin)["counters"]
    print(c["link_downs_closed"], c["link_downs_silent"], c["takeovers"])
except Exception:
    print("? ? ?")'
}

# Lines of the lab log (both controllers) that say an HA link went down or a controller claimed,
# fenced or took over.
ha_log_lines() {
    grep -cE "HA link down|claiming the primary role|fencing agent|became primary|no longer primary" \
        "$LAB_DIR/lab.log" 2>/dev/null || true
}

# soak MODE: the lab in MODE, the soak workload through both controllers at once for $SOAK s
# (with $HOG busy loops beside it); one JSON record appended to $RAW.
soak() {
    local mode=$1 spec="" s name label op pattern bs qd a0 b0 a1 b1 l0 l1 hogs=() i pa pb rca rcb
    for s in "${WORKLOADS[@]}"; do [[ ${s%%|*} == "$SOAK_WORKLOAD" ]] && spec=$s; done
    [[ -n $spec ]] || die "--soak-workload $SOAK_WORKLOAD: not one of ${WORKLOADS[*]%%|*}"
    IFS='|' read -r name label op pattern bs qd <<<"$spec"
    mkdir -p "$WORK/mode$mode"
    cp "$WORK/image" "$WORK/mode$mode/da0.img"
    # Info level: the log then also shows claims, fences and takeovers.
    RUST_LOG=${RUST_LOG:-info} lab_start "$mode" "$WORK/mode$mode" "$LUN_MIB"
    PID_A=$(node_pid ctrl-a)
    PID_B=$(node_pid ctrl-b)
    [[ -n $PID_A && -n $PID_B ]] || die "no controller PIDs in $LAB_DIR"
    a0=$(ha_counters ctrl-a)
    b0=$(ha_counters ctrl-b)
    l0=$(ha_log_lines)
    for ((i = 0; i < HOG; i++)); do
        timeout $((SOAK + WARMUP + 60)) sh -c 'while :; do :; done' &
        hogs+=("$!")
        track_pid "$!"
    done
    say "mode $mode: $label, $SESSIONS session(s) through each controller, ${SOAK}s, $HOG hog(s)"
    DURATION=$SOAK run_load "$WORK/soak-$mode-a.json" --portal "127.0.0.1:$LAB_PORT" \
        --target "$LAB_TARGET" --lun "$LAB_LUN" --op "$op" --pattern "$pattern" --block-size "$bs" \
        --qd "$qd" --sessions "$SESSIONS" &
    pa=$!
    track_pid "$pa"
    DURATION=$SOAK run_load "$WORK/soak-$mode-b.json" --portal "127.0.0.2:$LAB_PORT" \
        --target "$LAB_TARGET" --lun "$LAB_LUN" --op "$op" --pattern "$pattern" --block-size "$bs" \
        --qd "$qd" --sessions "$SESSIONS" &
    pb=$!
    track_pid "$pb"
    if wait "$pa"; then rca=0; else rca=$?; fi
    if wait "$pb"; then rcb=0; else rcb=$?; fi
    for i in "${hogs[@]}"; do stop_pid "$i" 2; done
    a1=$(ha_counters ctrl-a)
    b1=$(ha_counters ctrl-b)
    l1=$(ha_log_lines)
    local alive_a=yes alive_b=yes
    alive "$PID_A" || alive_a=no
    alive "$PID_B" || alive_b=no
    python3 - "$WORK/soak-$mode-a.json" "$WORK/soak-$mode-b.json" "$mode" "$label" "$SESSIONS" \
        "$qd" "$SOAK" "$HOG" "$a0" "$a1" "$b0" "$b1" "$l0" "$l1" "$alive_a" "$alive_b" "$rca" \
        "$rcb" >>"$RAW" <<'PY'
import json, sys
(fa, fb, mode, label, sessions, qd, secs, hog, a0, a1, b0, b1, l0, l1, alive_a, alive_b, rca,
 rcb) = sys.argv[1:]
def load(f):
    try:
        return json.load(open(f))
    except Exception:
        return {}
def diff(x, y):
    try:
        return [int(b) - int(a) for a, b in zip(x.split(), y.split())]
    except ValueError:
        return [None, None, None]
da, db = diff(a0, a1), diff(b0, b1)
ra, rb = load(fa), load(fb)
print(json.dumps({
    "mode": int(mode), "workload": label, "sessions_per_controller": int(sessions),
    "qd": int(qd), "seconds": int(secs), "hogs": int(hog),
    "iops_a": ra.get("iops"), "iops_b": rb.get("iops"),
    "errors": ra["errors"] + rb["errors"] if "errors" in ra and "errors" in rb else None,
    "load_rc": [int(rca), int(rcb)],
    "ctrl_a": {"link_downs_closed": da[0], "link_downs_silent": da[1], "takeovers": da[2]},
    "ctrl_b": {"link_downs_closed": db[0], "link_downs_silent": db[1], "takeovers": db[2]},
    "ha_log_lines": int(l1) - int(l0) if l0.isdigit() and l1.isdigit() else None,
    "alive": {"ctrl_a": alive_a == "yes", "ctrl_b": alive_b == "yes"},
}))
PY
    say "  $(tail -n1 "$RAW")"
    lab_stop
}

FAILED=0
if ((SOAK > 0)); then
    for mode in "${MODE_LIST[@]}"; do soak "$mode"; done
    machine_facts >"$WORK/facts.json"
    mkdir -p "$(dirname "$OUT")"
    rc=0
    python3 - "$RAW" "$WORK/facts.json" "$OUT" <<'PY' || rc=$?
import json, sys
raw, facts, out = sys.argv[1:]
rows = [json.loads(l) for l in open(raw) if l.strip()]
facts = json.load(open(facts))
def fmt(v):
    if v is None:
        return "?"
    if isinstance(v, float):
        return f"{v:,.0f}".replace(",", " ")
    return str(v)
bad = 0
lines = [
    f"## HA link heartbeats under load ({facts.get('nproc')} CPUs, kernel {facts.get('kernel')}; "
    f"duetd {facts.get('duetd_git_rev')})",
    "",
    "| mode | load per controller | s | hogs | IOPS ctrl-a | IOPS ctrl-b | errors "
    "| link downs ctrl-a (closed/silent) | link downs ctrl-b | takeovers a/b | HA log lines "
    "| both alive |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    a, b = r["ctrl_a"], r["ctrl_b"]
    alive = r["alive"]["ctrl_a"] and r["alive"]["ctrl_b"]
    events = [a["link_downs_closed"], a["link_downs_silent"], b["link_downs_closed"],
              b["link_downs_silent"], a["takeovers"], b["takeovers"], r["ha_log_lines"]]
    if any(e != 0 for e in events) or not alive:
        bad += 1
    lines.append(
        f"| {r['mode']} | {r['workload']} x {r['sessions_per_controller']} sessions "
        f"| {r['seconds']} | {r['hogs']} | {fmt(r['iops_a'])} | {fmt(r['iops_b'])} "
        f"| {fmt(r['errors'])} | {fmt(a['link_downs_closed'])}/{fmt(a['link_downs_silent'])} "
        f"| {fmt(b['link_downs_closed'])}/{fmt(b['link_downs_silent'])} "
        f"| {fmt(a['takeovers'])}/{fmt(b['takeovers'])} | {fmt(r['ha_log_lines'])} "
        f"| {'yes' if alive else 'NO'} |")
lines += ["", "Unplanned HA events (link downs, takeovers, claims, fences, a dead controller): "
          f"{'none' if bad == 0 else f'in {bad} run(s)'}. `errors` are commands the load saw "
          "fail (not HA events: see docs/performance.md)."]
md = "\n".join(lines)
print(md)
with open(out, "w") as f:
    json.dump({"facts": facts, "runs": rows, "markdown": md, "clean": bad == 0}, f, indent=1)
sys.exit(1 if bad else 0)
PY
    say "results: $OUT"
    exit "$rc"
fi

for mode in "${MODE_LIST[@]}"; do
    mkdir -p "$WORK/mode$mode"
    cp "$WORK/image" "$WORK/mode$mode/da0.img"
    lab_start "$mode" "$WORK/mode$mode" "$LUN_MIB"
    PID_A=$(node_pid ctrl-a)
    PID_B=$(node_pid ctrl-b)
    [[ -n $PID_A && -n $PID_B ]] || die "no controller PIDs in $LAB_DIR"
    for pid in $PID_A $PID_B; do
        n=$(direct_fds "$pid" "$WORK/mode$mode/da0.img")
        say "pid $pid: LUN file open with O_DIRECT on $n descriptor(s), without on $(plain_fds "$pid" "$WORK/mode$mode/da0.img")"
        LUN_DIRECT_FDS="${LUN_DIRECT_FDS:+$LUN_DIRECT_FDS,}$n"
    done
    step=0
    for spec in "${selected[@]}"; do
        IFS='|' read -r name label _ <<<"$spec"
        step=$((step + 1))
        for ((r = 1; r <= ROUNDS; r++)); do
            say "mode $mode [$step/${#selected[@]}] $label, round $r/$ROUNDS (${DURATION}s)"
            if ((r % 2)); then order="direct secondary"; else order="secondary direct"; fi
            for path in $order; do
                if [[ $path == direct ]]; then portal="127.0.0.1:$LAB_PORT"; else portal="127.0.0.2:$LAB_PORT"; fi
                load_run "$RAW" "$PID_A $PID_B" "$portal" "$LAB_TARGET" "$LAB_LUN" "$spec" 1 \
                    mode="$mode" path="$path" round="$r" || FAILED=$((FAILED + 1))
                if ! alive "$PID_A" || ! alive "$PID_B"; then
                    show_tail "$LAB_DIR/lab.log" 30
                    die "a controller died (mode $mode)"
                fi
            done
        done
    done
    lab_stop
done

machine_facts >"$WORK/facts.json"
python3 "$REPORT" kv duration_s="$DURATION" warmup_s="$WARMUP" rounds="$ROUNDS" lun_mib="$LUN_MIB" \
    "modes=[$MODES]" "only=$ONLY" "duet_load=$DUET_LOAD_BIN" sessions=1 "dir=$LAB_BASE" \
    "fs_type=$FS_TYPE" "lun_direct_fds=[$LUN_DIRECT_FDS]" >"$WORK/params.json"
mkdir -p "$(dirname "$OUT")"
python3 "$REPORT" lab "$RAW" "$WORK/facts.json" "$WORK/params.json" "$OUT"
say "results: $OUT"
if [[ $FAILED -gt 0 ]]; then
    say "$FAILED run(s) failed"
    exit 1
fi
