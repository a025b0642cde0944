#!/usr/bin/env bash
# Runs the end-to-end failover tests of the two-controller lab and prints a table of the longest
# stall the multipath initiator saw, per HA mode and scenario, with each test's verdict. Ignored
# tests run too (they are ignored for known daemon bugs; the table shows how they fare).
#
#   verification/failover-report.sh [extra test filter...]
#
# Needs root (the tests create network namespaces and use iptables). Builds duetd/duetctl first
# (the tests look for them in the build directory of the same profile). The full log is kept in
# build/failover-report.log (or $CARGO_TARGET_DIR/failover-report.log).
set -u -o pipefail

cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-build}"
mkdir -p "$target_dir"
log="$target_dir/failover-report.log"

echo "building duetd, duetctl and duet-mpio (release)..." >&2
if ! cargo build --release -p duet-target -p duet-hosts --bins >&2; then
    echo "failover-report: cargo build --release -p duet-target -p duet-hosts failed" >&2
    exit 2
fi

echo "running the failover tests (log: $log)..." >&2
cargo test --release -p duet-verification --test ha_failover -- \
    --nocapture --test-threads 1 --include-ignored "$@" 2>&1 | tee "$log" >&2
status=${PIPESTATUS[0]}

# test <name> ... ok|FAILED|ignored  ->  verdict per test name.
awk '
    /^test [a-z0-9_]+ \.\.\. / {
        name = $2
        v = ($0 ~ /\.\.\. ignored/) ? "ignored" : ""
        verdict[name] = v
        current = name
    }
    /^ok$/ || / ok$/ { if (current != "" && verdict[current] == "") verdict[current] = "pass" }
    /FAILED$/ || /^FAILED/ { if (current != "" && verdict[current] == "") verdict[current] = "FAIL" }
    # With --nocapture a line may start with "test NAME ... " before the FAILOVER record.
    match($0, /FAILOVER mode=.*/) {
        nf = split(substr($0, RSTART), fld, " ")
        mode = ""; scen = ""; stall = ""; clean = ""; ops = ""
        for (i = 2; i <= nf; i++) {
            split(fld[i], kv, "=")
            if (kv[1] == "mode") mode = kv[2]
            if (kv[1] == "scenario") scen = kv[2]
            if (kv[1] == "longest_stall_ms") stall = kv[2]
            if (kv[1] == "ops") ops = kv[2]
            if (kv[1] == "clean") clean = kv[2]
        }
        key = mode SUBSEP scen
        stalls[key] = stall
        cleans[key] = clean
        opss[key] = ops
        seen_scen[scen] = 1
        seen_mode[mode] = 1
    }
    match($0, /CONFORMANCE mode=.*/) { conf[++nconf] = substr($0, RSTART) }
    END {
        n = split("kill_secondary kill_primary sigstop_primary link_cut restart_rejoin switchover", order, " ")
        printf "\nLongest stall (ms) per HA mode and scenario; verdict of each test in parentheses\n\n"
        printf "%-16s", "scenario"
        for (m = 0; m <= 2; m++) printf " | %-18s", "mode " m
        printf "\n"
        printf "%-16s", "----------------"
        for (m = 0; m <= 2; m++) printf " | %-18s", "------------------"
        printf "\n"
        for (i = 1; i <= n; i++) {
            s = order[i]
            printf "%-16s", s
            for (m = 0; m <= 2; m++) {
                key = m SUBSEP s
                t = "mode" m "_" s
                v = (t in verdict) ? verdict[t] : ""
                if (key in stalls) {
                    if (v == "") v = (cleans[key] == "yes") ? "pass" : "FAIL"
                    cell = stalls[key] " (" v ")"
                } else if (v != "") {
                    cell = "- (" v ")"
                } else {
                    cell = "not run"
                }
                printf " | %-18s", cell
            }
            printf "\n"
        }
        if (nconf > 0) {
            printf "\niscsi-test-cu -t ALL over both controllers:\n"
            for (i = 1; i <= nconf; i++) {
                c = conf[i]; sub(/^CONFORMANCE /, "", c)
                split(c, f, " "); mm = f[1]; sub(/mode=/, "", mm)
                t = "lab_conformance_mode" mm
                printf "  %s (%s)\n", c, (t in verdict) ? verdict[t] : "?"
            }
        }
        printf "\nGoal for the planned switchover: longest stall < 200 ms.\n"
    }
' "$log"

exit "$status"
