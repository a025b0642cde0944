# bench/run.sh --direct (sourced by run.sh after its options are parsed): direct I/O on a disk.
#
# Three ways to the same file system, one after the other: Duet serving a LUN with
# `direct = true` (media I/O through io_uring on the connection threads), tgt serving one with
# `--bstype aio` (O_DIRECT, Linux AIO), and fio with `--ioengine=io_uring --direct=1` on a file
# of its own: the device's own limit, with no network and no SCSI in between. Each workload runs
# against all three, rotating the order round by round; report: bench/lib/direct.py.
# Uses run.sh's globals (DURATION, WARMUP, ROUNDS, ONLY, LUN_MIB, OUT, WORKLOADS, TARGET_TASKSET,
# CLIENT_TASKSET, PIN_TARGET, PIN_CLIENT) and bench/lib/common.sh.

DIRECT_REPORT="$BENCH_DIR/lib/direct.py"
OUT=${OUT:-$(default_out direct)}

ensure_fio() {
    if ! command -v fio >/dev/null; then
        say "installing fio"
        apt-get install -y fio >&2 || die "cannot install fio"
    fi
}

need_root
ensure_tgt
ensure_fio
build_bins
need_bin duetd
DUET_LOAD_BIN=$(find_duet_load)
say "load client: $DUET_LOAD_BIN"

# A directory on a real file system (not tmpfs: there is no device behind it).
DIRECT_BASE=${DUET_DIRECT_DIR:-$ROOT/build}
disk_workdir "$DIRECT_BASE" duet-bench-direct DUET_DIRECT_DIR
say "LUN files in $WORK ($FS_TYPE)"
DUET_IQN="iqn.2026-11.dev.duet:bench-direct"
TGT_IQN="iqn.2026-11.dev.tgt:bench-direct"
RAW="$WORK/runs.jsonl"
: >"$RAW"

make_random_file "$WORK/duet.img" "$LUN_MIB"
cp --sparse=never "$WORK/duet.img" "$WORK/tgt.img"
cp --sparse=never "$WORK/duet.img" "$WORK/fio.img"
sync

# ---- duetd -----------------------------------------------------------------------------------
PORT_D=$(pick_port)
write_duetd_config "$WORK/duetd.toml" "$PORT_D" "bench/run.sh --direct" "direct = true"
say "starting duetd on 127.0.0.1:$PORT_D (direct = true)"
# The uring module's start line says which path media I/O takes.
RUST_LOG=${RUST_LOG:-warn,duet_target::uring=info} "${TARGET_TASKSET[@]}" "$BIN_DIR/duetd" \
    --config "$WORK/duetd.toml" 2>"$WORK/duetd.log" &
DUET_PID=$!
track_pid "$DUET_PID"
wait_port 127.0.0.1 "$PORT_D" 30 "$DUET_PID" || {
    show_tail "$WORK/duetd.log" 20
    die "duetd did not start"
}
if grep -q "io_uring unavailable" "$WORK/duetd.log"; then
    MEDIA_PATH="blocking pool ($(grep -o 'io_uring unavailable ([^)]*)' "$WORK/duetd.log" | head -1))"
else
    MEDIA_PATH="io_uring"
fi
say "duetd media I/O: $MEDIA_PATH"

# ---- tgtd (aio) ------------------------------------------------------------------------------
start_tgtd "$WORK/tgt.img" aio

check_alive() {
    alive "$DUET_PID" || { show_tail "$WORK/duetd.log" 20; die "duetd died"; }
    alive "$TGT_PID" || { show_tail "$WORK/tgtd.log" 20; die "tgtd died"; }
}

FAILED=0

# measure_fio WORKLOAD-SPEC ROUND: fio on its own file, one job at the workload's depth.
measure_fio() {
    local spec=$1 round=$2 name label op pattern bs qd rw out rc rec
    IFS='|' read -r name label op pattern bs qd <<<"$spec"
    case $op/$pattern in
    read/random) rw=randread ;;
    write/random) rw=randwrite ;;
    read/seq) rw=read ;;
    write/seq) rw=write ;;
    esac
    RUN_NO=$((RUN_NO + 1))
    out="$WORK/fio-$RUN_NO.json"
    rc=0
    timeout --kill-after=5 $((DURATION + WARMUP + 30)) "${CLIENT_TASKSET[@]}" fio --name="$name" \
        --filename="$WORK/fio.img" --size="${LUN_MIB}M" --ioengine=io_uring --direct=1 \
        --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 --norandommap --randrepeat=0 \
        --time_based --runtime="$DURATION" --ramp_time="$WARMUP" --lat_percentiles=1 \
        --output-format=json --output="$out" >"$out.err" 2>&1 || rc=$?
    rec=$(python3 "$DIRECT_REPORT" fio "$out" target=fio workload="$name" "label=$label" op="$op" \
        sessions=1 rc="$rc" block_size="$bs" qd="$qd" round="$round")
    echo "$rec" >>"$RAW"
    say "  target=fio round=$round: $(python3 "$REPORT" brief <<<"$rec")"
    if ! grep -q '"ok": true' <<<"$rec"; then
        FAILED=$((FAILED + 1))
        show_tail "$out.err" 5
    fi
}

# measure TARGET WORKLOAD-SPEC ROUND
measure() {
    case $1 in
    duet) load_run "$RAW" "$DUET_PID" "127.0.0.1:$PORT_D" "$DUET_IQN" 0 "$2" 1 target=duet round="$3" ||
        FAILED=$((FAILED + 1)) ;;
    tgt) load_run "$RAW" "$TGT_PID" "127.0.0.1:$PORT_T" "$TGT_IQN" 1 "$2" 1 target=tgt round="$3" ||
        FAILED=$((FAILED + 1)) ;;
    fio) measure_fio "$2" "$3" ;;
    esac
    check_alive
}

# Round r starts with a different target: (duet tgt fio), (tgt fio duet), (fio duet tgt), ...
order_of() {
    local all=(duet tgt fio) i out=()
    for i in 0 1 2; do out+=("${all[(($1 - 1 + i) % 3)]}"); done
    echo "${out[*]}"
}

selected=()
for spec in "${WORKLOADS[@]}"; do
    if [[ -z $ONLY || ${spec%%|*} =~ $ONLY ]]; then selected+=("$spec"); fi
done
[[ ${#selected[@]} -gt 0 ]] || die "--only $ONLY matches no workload (${WORKLOADS[*]%%|*})"

step=0
for spec in "${selected[@]}"; do
    IFS='|' read -r name label _ <<<"$spec"
    step=$((step + 1))
    for ((r = 1; r <= ROUNDS; r++)); do
        say "[$step/${#selected[@]}] $label, round $r/$ROUNDS (${DURATION}s each)"
        for t in $(order_of "$r"); do
            measure "$t" "$spec" "$r"
        done
    done
done

# ---- report ----------------------------------------------------------------------------------
machine_facts >"$WORK/facts.base.json"
python3 - "$WORK/facts.base.json" "$(fio --version 2>/dev/null || echo fio)" >"$WORK/facts.json" <<'EOF'
import json, sys
facts = json.load(open(sys.argv[1]))
facts["fio_version"] = sys.argv[2]
print(json.dumps(facts))
EOF
python3 "$REPORT" kv duration_s="$DURATION" warmup_s="$WARMUP" rounds="$ROUNDS" lun_mib="$LUN_MIB" \
    "only=$ONLY" sessions=1 "duet_load=$DUET_LOAD_BIN" block_size=512 "dir=$DIRECT_BASE" \
    "fs_type=$FS_TYPE" "media_path=$MEDIA_PATH" "pin_target=$PIN_TARGET" \
    "pin_client=$PIN_CLIENT" >"$WORK/params.json"
mkdir -p "$(dirname "$OUT")"
python3 "$DIRECT_REPORT" summary "$RAW" "$WORK/facts.json" "$WORK/params.json" "$OUT"
say "results: $OUT"
if [[ $FAILED -gt 0 ]]; then
    say "$FAILED run(s) failed"
    exit 1
fi
exit 0
