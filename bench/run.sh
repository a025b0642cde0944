#!/usr/bin/env bash
# bench/run.sh: one controller, Duet (duetd) against tgt (tgtd), side by side on loopback.
#
# Both targets serve a LUN file on tmpfs (same size, same random content, 512-byte blocks).
# Each workload runs through duet-load against both targets, alternating (duet, tgt, tgt, duet,
# ...), and the medians go into a Markdown table on stdout; the read workloads run once more
# through libiscsi's iscsi-perf. Every raw run, the summary and the machine facts go to a JSON
# file. Run as root: bench/run.sh [--quick] [--only REGEX] ...
#
# With --direct: direct I/O on a disk instead (bench/lib/direct.sh): Duet with `direct = true`,
# tgt with `--bstype aio` and local fio (io_uring, O_DIRECT), one session, all in one run.
source "$(dirname "$0")/lib/common.sh"

usage() {
    cat <<EOF
usage: bench/run.sh [options]
  --duration S   seconds measured per run (default 5)
  --warmup S     seconds of warm-up per duet-load run, not measured (default 1)
  --rounds R     runs per target and workload, alternating; medians reported (default 3)
  --quick        --duration 3 --rounds 1
  --only REGEX   only workloads whose name matches (e.g. 'randread', '4k-.*qd32', '128k')
  --sessions L   session counts, comma-separated (default 1,4)
  --lun-mib N    LUN size in MiB (default 1024)
  --no-perf      skip the iscsi-perf rows
  --out FILE     JSON output (default bench/results/single-<date>.json)
  --no-build     use the binaries already built
  --pin-target CPUS  run both targets on these CPUs (taskset list, e.g. 0)
  --pin-client CPUS  run the clients on these CPUs (e.g. 1); with --pin-target, takes the
                 scheduler's placement out of the comparison (QD1 above all)
  --direct       direct I/O on a disk file system: Duet (direct = true, io_uring) against tgt
                 (--bstype aio) and local fio (--ioengine=io_uring --direct=1), one session;
                 LUN files under \$DUET_DIRECT_DIR (default build/); --sessions and --no-perf
                 do not apply
Environment: DUET_BIN_DIR (default build/release), DUET_LOAD (a duet-load binary).
Workloads: ${WORKLOADS[*]%%|*}
EOF
}

# name|label|op|pattern|block size|queue depth per session
WORKLOADS=(
    "4k-randread-qd32|4K random read QD32|read|random|4096|32"
    "4k-randwrite-qd32|4K random write QD32|write|random|4096|32"
    "4k-randread-qd1|4K random read QD1|read|random|4096|1"
    "4k-randwrite-qd1|4K random write QD1|write|random|4096|1"
    "128k-seqread-qd32|128K sequential read QD32|read|seq|131072|32"
    "128k-seqwrite-qd32|128K sequential write QD32|write|seq|131072|32"
)

# Three rounds, so that the median is one round's result: tgt's single-session QD1 latency
# comes in two modes on some machines (see README), and the mean of two rounds would mix them.
DURATION=5
WARMUP=1
ROUNDS=3
ONLY=""
SESSIONS="1,4"
LUN_MIB=1024
PERF=1
OUT=""
NO_BUILD=0
PIN_TARGET=""
PIN_CLIENT=""
DIRECT=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --quick) DURATION=3; ROUNDS=1 ;;
    --only) ONLY=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --lun-mib) LUN_MIB=$2; shift ;;
    --no-perf) PERF=0 ;;
    --out) OUT=$2; shift ;;
    --no-build) NO_BUILD=1 ;;
    --pin-target) PIN_TARGET=$2; shift ;;
    --pin-client) PIN_CLIENT=$2; shift ;;
    --direct) DIRECT=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "--duration: whole seconds above 0"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "--warmup: whole seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "--rounds: a number above 0"
[[ $LUN_MIB =~ ^[0-9]+$ && $LUN_MIB -ge 16 ]] || die "--lun-mib: at least 16"
[[ $SESSIONS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sessions: e.g. 1,4"
IFS=, read -r -a SESSION_LIST <<<"$SESSIONS"
TARGET_TASKSET=()
# check_pin OPTION CPUS: a CPU list taskset accepts on this machine (or nothing).
check_pin() {
    [[ -z $2 || $2 =~ ^[0-9]+([,-][0-9]+)*$ ]] || die "$1: a CPU list such as 0 or 0,1"
    [[ -z $2 ]] || taskset -c "$2" true 2>/dev/null || die "$1: CPUs $2 are not available here"
}
check_pin --pin-target "$PIN_TARGET"
check_pin --pin-client "$PIN_CLIENT"
[[ -n $PIN_TARGET ]] && TARGET_TASKSET=(taskset -c "$PIN_TARGET")
[[ -n $PIN_CLIENT ]] && CLIENT_TASKSET=(taskset -c "$PIN_CLIENT")
if [[ $DIRECT == 1 ]]; then
    # shellcheck source=lib/direct.sh
    source "$BENCH_DIR/lib/direct.sh"
fi
OUT=${OUT:-$(default_out single)}

need_root
ensure_tgt
[[ $PERF == 1 ]] && ensure_iscsi_perf
build_bins
need_bin duetd
DUET_LOAD_BIN=$(find_duet_load)
say "load client: $DUET_LOAD_BIN"

shm_dir single WORK
DUET_IQN="iqn.2026-11.dev.duet:bench"
TGT_IQN="iqn.2026-11.dev.tgt:bench"
RAW="$WORK/runs.jsonl"
: >"$RAW"

# ---- LUN files -------------------------------------------------------------------------------
make_random_file "$WORK/duet.img" "$LUN_MIB"
cp "$WORK/duet.img" "$WORK/tgt.img"

# ---- duetd -----------------------------------------------------------------------------------
PORT_D=$(pick_port)
write_duetd_config "$WORK/duetd.toml" "$PORT_D" "bench/run.sh"
say "starting duetd on 127.0.0.1:$PORT_D"
RUST_LOG=${RUST_LOG:-warn} "${TARGET_TASKSET[@]}" "$BIN_DIR/duetd" --config "$WORK/duetd.toml" 2>"$WORK/duetd.log" &
DUET_PID=$!
track_pid "$DUET_PID"
wait_port 127.0.0.1 "$PORT_D" 30 "$DUET_PID" || {
    show_tail "$WORK/duetd.log" 20
    die "duetd did not start"
}

# ---- tgtd ------------------------------------------------------------------------------------
start_tgtd "$WORK/tgt.img"

# target -> "pid portal lun"
target_info() {
    case $1 in
    duet) echo "$DUET_PID 127.0.0.1:$PORT_D 0 $DUET_IQN" ;;
    tgt) echo "$TGT_PID 127.0.0.1:$PORT_T 1 $TGT_IQN" ;;
    esac
}

check_alive() {
    alive "$DUET_PID" || { show_tail "$WORK/duetd.log" 20; die "duetd died"; }
    alive "$TGT_PID" || { show_tail "$WORK/tgtd.log" 20; die "tgtd died"; }
}

FAILED=0

# measure_load TARGET WORKLOAD-SPEC SESSIONS ROUND
measure_load() {
    local pid portal lun iqn
    read -r pid portal lun iqn <<<"$(target_info "$1")"
    load_run "$RAW" "$pid" "$portal" "$iqn" "$lun" "$2" "$3" target="$1" round="$4" ||
        FAILED=$((FAILED + 1))
    check_alive
}

# measure_perf TARGET WORKLOAD-SPEC SESSIONS ROUND: SESSIONS iscsi-perf processes at once.
measure_perf() {
    local target=$1 spec=$2 sessions=$3 round=$4
    local name label op pattern bs qd pid portal lun iqn c1 c2 i rc=0 rec sum
    local -a pids=() outs=() rflag=()
    IFS='|' read -r name label op pattern bs qd <<<"$spec"
    read -r pid portal lun iqn <<<"$(target_info "$target")"
    [[ $pattern == random ]] && rflag=(-r)
    RUN_NO=$((RUN_NO + 1))
    c1=$(cpu_seconds "$pid")
    for ((i = 1; i <= sessions; i++)); do
        outs+=("$WORK/perf-$RUN_NO-$i.out")
        timeout --kill-after=5 $((DURATION + 30)) "${CLIENT_TASKSET[@]}" iscsi-perf -i "iqn.2026-11.dev.duet:bench-perf-$i" \
            -m "$qd" -b $((bs / 512)) "${rflag[@]}" -t "$DURATION" "iscsi://$portal/$iqn/$lun" \
            >"${outs[-1]}" 2>&1 &
        pids+=($!)
        track_pid "$!"
    done
    for i in "${pids[@]}"; do
        wait "$i" || rc=$?
    done
    c2=$(cpu_seconds "$pid")
    sum=$(python3 "$REPORT" perf "${outs[@]}")
    rec=$(python3 - "$sum" "$target" "$name" "$label" "$sessions" "$round" "$rc" "$bs" "$qd" "$DURATION" \
        "$(awk -v a="$c1" -v b="$c2" 'BEGIN { printf "%.3f", b - a }')" <<'EOF'
import json, sys
s, target, name, label, sessions, rnd, rc, bs, qd, dur, cpu = sys.argv[1:]
s = json.loads(s)
bs, dur = int(bs), float(dur)
iops = s["iops"]
print(json.dumps({
    "client": "iscsi-perf", "target": target, "workload": name, "label": label,
    "sessions": int(sessions), "round": int(rnd), "rc": int(rc), "block_size": bs, "qd": int(qd),
    "seconds": dur, "iops": iops, "mb_s": s["mb_s"],
    "mib_s": iops * bs / 1048576.0 if iops is not None else None,
    "bytes": int(iops * bs * dur) if iops is not None else None,
    "target_cpu_s": float(cpu), "processes": s["processes"],
    "ok": bool(s["ok"]) and int(rc) == 0,
}))
EOF
    )
    echo "$rec" >>"$RAW"
    say "  $target (iscsi-perf): $(python3 "$REPORT" brief <<<"$rec")"
    if ! python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["ok"] else 1)' "$rec"; then
        FAILED=$((FAILED + 1))
        show_tail "${outs[0]}" 3
    fi
    check_alive
}

# Alternates the targets: round 1 duet then tgt, round 2 tgt then duet, and so on (ABBA).
order_of() { if (($1 % 2)); then echo "duet tgt"; else echo "tgt duet"; fi; }

selected=()
for spec in "${WORKLOADS[@]}"; do
    if [[ -z $ONLY || ${spec%%|*} =~ $ONLY ]]; then selected+=("$spec"); fi
done
[[ ${#selected[@]} -gt 0 ]] || die "--only $ONLY matches no workload (${WORKLOADS[*]%%|*})"

total=$((${#selected[@]} * ${#SESSION_LIST[@]}))
step=0
for spec in "${selected[@]}"; do
    IFS='|' read -r name label _ <<<"$spec"
    for s in "${SESSION_LIST[@]}"; do
        step=$((step + 1))
        for ((r = 1; r <= ROUNDS; r++)); do
            say "[$step/$total] $label, $s session(s), round $r/$ROUNDS (duet-load, ${DURATION}s)"
            for t in $(order_of "$r"); do
                measure_load "$t" "$spec" "$s" "$r"
            done
        done
    done
done

if [[ $PERF == 1 ]]; then
    step=0
    reads=()
    for spec in "${selected[@]}"; do
        IFS='|' read -r _ _ op _ <<<"$spec"
        [[ $op == read ]] && reads+=("$spec")
    done
    total=$((${#reads[@]} * ${#SESSION_LIST[@]}))
    for spec in "${reads[@]}"; do
        IFS='|' read -r name label _ <<<"$spec"
        for s in "${SESSION_LIST[@]}"; do
            step=$((step + 1))
            for ((r = 1; r <= ROUNDS; r++)); do
                say "[perf $step/$total] $label, $s session(s), round $r/$ROUNDS (iscsi-perf, ${DURATION}s)"
                for t in $(order_of "$r"); do
                    measure_perf "$t" "$spec" "$s" "$r"
                done
            done
        done
    done
fi

# ---- report ----------------------------------------------------------------------------------
machine_facts >"$WORK/facts.json"
python3 "$REPORT" kv duration_s="$DURATION" warmup_s="$WARMUP" rounds="$ROUNDS" lun_mib="$LUN_MIB" \
    "only=$ONLY" "sessions=[$SESSIONS]" "duet_load=$DUET_LOAD_BIN" block_size=512 \
    "duet_portal=127.0.0.1:$PORT_D" "tgt_portal=127.0.0.1:$PORT_T" "pin_target=$PIN_TARGET" \
    "pin_client=$PIN_CLIENT" >"$WORK/params.json"
mkdir -p "$(dirname "$OUT")"
python3 "$REPORT" single "$RAW" "$WORK/facts.json" "$WORK/params.json" "$OUT"
say "results: $OUT"
if [[ $FAILED -gt 0 ]]; then
    say "$FAILED run(s) failed"
    exit 1
fi
