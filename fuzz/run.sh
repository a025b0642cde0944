#!/usr/bin/env bash
# Runs every Duet fuzz target for SECONDS (default 600) one after the other, at the lowest CPU
# priority, and writes a summary to fuzz/last-run.txt.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Each target starts from the committed seeds in fuzz/corpus/<target>/ plus the working corpus of
# earlier runs in fuzz/target/work-corpus/<target>/ (new inputs go there, not into git). Crashes
# land in fuzz/artifacts/<target>/. Needs cargo-fuzz and the nightly toolchain.
set -u
secs=${1:-600}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(pdu_decode login_text cdb_decode ha_frame ha_handshake config_toml config_ctl)
fi
summary="$here/last-run.txt"
logs="$here/target/run-logs"
mkdir -p "$logs"
cd "$root" || exit 2

echo "building fuzz targets..." >&2
if ! nice -n 19 cargo +nightly fuzz build --fuzz-dir fuzz --target-dir fuzz/target -O >"$logs/build.log" 2>&1; then
    echo "build failed, see $logs/build.log" >&2
    tail -20 "$logs/build.log" >&2
    exit 2
fi

{
    echo "# Duet fuzz run: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${secs}s per target, host $(hostname), $(nproc) CPUs"
    printf '%-12s %12s %8s %7s %7s %7s %8s\n' target execs exec/s cov ft corpus crashes
} >"$summary"

status=0
for t in "${targets[@]}"; do
    work="$here/target/work-corpus/$t"
    seeds="$here/corpus/$t"
    arts="$here/artifacts/$t"
    mkdir -p "$work" "$seeds" "$arts"
    dict=()
    [ -f "$here/dict/$t.dict" ] && dict=("-dict=$here/dict/$t.dict")
    log="$logs/$t.log"
    echo "== $t: ${secs}s" >&2
    before=$(find "$arts" -type f | wc -l)
    start=$(date +%s)
    deadline=$((start + secs))
    : >"$log"
    # A plain run first; if it stops on a crash with time left, the rest of the time runs in
    # fork mode, which records further crashes and carries on.
    nice -n 19 cargo +nightly fuzz run --fuzz-dir fuzz --target-dir fuzz/target -O "$t" "$work" "$seeds" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$arts/" "${dict[@]}" >>"$log" 2>&1
    rc=$?
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    left=$((deadline - $(date +%s)))
    if [ "$rc" -ne 0 ] && [ "$left" -gt 10 ]; then
        echo "== $t crashed (rc=$rc); going on in fork mode for ${left}s" | tee -a "$log" >&2
        mark=$(wc -l <"$log")
        nice -n 19 cargo +nightly fuzz run --fuzz-dir fuzz --target-dir fuzz/target -O "$t" "$work" "$seeds" -- \
            -max_total_time="$left" -rss_limit_mb=2048 -timeout=20 -fork=1 -ignore_crashes=1 \
            -ignore_timeouts=1 -ignore_ooms=1 -artifact_prefix="$arts/" "${dict[@]}" >>"$log" 2>&1
        more=$(tail -n +"$((mark + 1))" "$log" | grep -oE '^#[0-9]+' | tail -1 | tr -d '#')
        execs=$(( ${execs:-0} + ${more:-0} ))
    fi
    elapsed=$(( $(date +%s) - start ))
    eps=$(( ${execs:-0} / (elapsed > 0 ? elapsed : 1) ))
    after=$(find "$arts" -type f | wc -l)
    crashes=$((after - before))
    last=$(grep -E '#[0-9]+.*(cov|ft):' "$log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
    corpus=$(find "$work" -type f | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="rc=$rc"
    fi
    [ "$rc" -ne 0 ] && status=1
    printf '%-12s %12s %8s %7s %7s %7s %8s\n' "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" \
        "$corpus" "$crashes" | tee -a "$summary" >&2
    if [ "$rc" -ne 0 ]; then
        grep -m1 -A12 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/    /' | tee -a "$summary" >&2
    fi
done
echo "# logs: fuzz/target/run-logs/, crashes: fuzz/artifacts/" >>"$summary"
exit $status
