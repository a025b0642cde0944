#!/usr/bin/env bash
# verification/vm/run.sh: one scenario of the virtual lab (or all of them), end to end.
#
#   verification/vm/run.sh --scenario NAME|all [--mode 0|1|2] [--keep] [--retries N] [--strict-timing]
#
# NAME: secondary-poweroff, primary-poweroff, primary-freeze, ha-cut, manual, switchover,
# sigterm. `all` runs every scenario in mode 1 and primary-poweroff, switchover and sigterm in
# modes 0 and 2, one line of JSON each, then a summary line. Builds the image if needed (build.sh) and
# the release binaries if missing, starts a network namespace with tgt and three QEMU guests,
# runs the scenario under a verifying workload and prints as its last line one JSON object
# (scenario, mode, ok, app_errors, lost_writes, stale_reads, corrupt_reads, max_stall_ms,
# fenced, ...). Everything it started is stopped and removed on exit, also on Ctrl-C; --keep
# keeps the run directory (consoles, duetd logs, workload output) under /tmp/duet-vm-*.
# Stall bounds (switchover, sigterm: 1 s) are measured and reported (timing_ok); with
# --strict-timing a missed bound fails the run. --retries N runs a failed scenario again, up to
# N times, only when the lab itself failed (emulator, guest agent, tgt) or, with
# --strict-timing, a stall bound was missed with the data intact; every attempt is printed.
# Exit status 0 when every scenario passed.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
for a in "$@"; do
    case "$a" in -h | --help)
        sed -n '2,19p' "$0"
        exit 0
        ;;
    esac
done
[ "$(id -u)" = 0 ] || {
    echo "run.sh: must run as root (network namespaces, tap devices, tgtd)" >&2
    exit 2
}
IMAGE=$("$HERE/build.sh" | tail -n1)
BIN="$ROOT/build/release"
need=()
for b in duetd duetctl; do [ -x "$BIN/$b" ] || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
    echo "[run] building ${need[*]} (release)" >&2
    (cd "$ROOT" && cargo build --release -p duet-target --bin duetd --bin duetctl >&2)
fi
if [ ! -x "$BIN/duet-blockcheck" ] && [ -f "$ROOT/verification/hosts/src/bin/duet-blockcheck.rs" ]; then
    echo "[run] building duet-blockcheck (release)" >&2
    (cd "$ROOT" && cargo build --release -p duet-hosts --bin duet-blockcheck >&2)
fi
exec python3 "$HERE/lib/lab.py" --image "$IMAGE" --bindir "$BIN" "$@"
