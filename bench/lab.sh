#!/usr/bin/env bash
# bench/lab.sh: the two-controller lab, direct path (ctrl-a, primary) against the path through
# the secondary (ctrl-b), in ha_mode 2 (ctrl-b forwards every command to ctrl-a over the HA link)
# and ha_mode 1 (ctrl-b does the I/O itself on the shared file). One session, duet-load.
# Markdown table on stdout, every run in a JSON file. Run as root: bench/lab.sh [--quick] ...
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
IFS=, read -r -a MODE_LIST <<<"$MODES"
OUT=${OUT:-$(default_out lab)}

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

FAILED=0
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
