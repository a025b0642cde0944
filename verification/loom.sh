#!/usr/bin/env bash
# Runs every loom model of duet-target's shared structures (target/tests/loom_models.rs) and
# prints, per model, its name, the interleavings loom explored and the invariant it checks.
#
# The models run the real runtime code with loom's primitives: duet-target is built with
# `--cfg duet_loom` (not `--cfg loom`, which would also switch tokio and drop tokio::net), in
# its own target directory (build/loom) so the normal build is not rebuilt.
#
# Usage: verification/loom.sh [extra args for the test binary, e.g. a model name to filter]
# Environment: LOOM_MAX_PREEMPTIONS (default 3): the preemption bound of every model.
# Exit status: 0 when every model holds (and every deliberately broken one is caught).
set -euo pipefail
cd "$(dirname "$0")/.."

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--cfg duet_loom"
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-$PWD/build/loom}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"

log="$(mktemp "${TMPDIR:-/tmp}/duet-loom.XXXXXX")"
trap 'rm -f "$log"' EXIT

echo "loom: building and running the models (preemption bound $LOOM_MAX_PREEMPTIONS, target dir $CARGO_TARGET_DIR)"
status=0
cargo test --release -p duet-target --test loom_models -- --nocapture --test-threads=1 "$@" \
    >"$log" 2>&1 || status=$?

echo
printf '%-48s %14s  %s\n' "model" "interleavings" "invariant"
printf '%-48s %14s  %s\n' "-----" "-------------" "---------"
# Models that hold: "LOOM-MODEL <name> interleavings=<n> bound=<b> invariant: <text>".
sed -n 's/^.*LOOM-MODEL \([^ ]*\) interleavings=\([0-9]*\) bound=[0-9]* invariant: \(.*\)$/\1\t\2\t\3/p' "$log" |
    while IFS=$'\t' read -r name n invariant; do
        [ "$invariant" = "(must fail)" ] && continue
        printf '%-48s %14s  %s\n' "$name" "$n" "$invariant"
    done
# Deliberately broken models: they pass (should_panic) when loom finds the violation; libtest
# lists failed tests, indented, after a "failures:" line.
failed="$(sed -n '/^failures:$/,/^test result:/p' "$log" | sed -n 's/^    \([A-Za-z0-9_:]*\)$/\1/p')"
sed -n 's/^.*LOOM-MODEL \([^ ]*\) expects a violation: \(.*\)$/\1\t\2/p' "$log" |
    while IFS=$'\t' read -r name rule; do
        if ! grep -qx "$name" <<<"$failed"; then
            verdict="violation found (as it must)"
        else
            verdict="VIOLATION NOT FOUND"
        fi
        printf '%-48s %14s  %s: %s\n' "$name" "-" "$verdict" "$rule"
    done
echo

summary="$(grep -E '^test result:' "$log" | tail -n 1 || true)"
if [ "$status" -ne 0 ]; then
    if [ -n "$failed" ]; then
        echo "loom: FAILED: $(echo $failed)" >&2
        echo "loom: messages (the deliberately broken models panic too, as they must):" >&2
        grep -E "panicked at|did not panic|^  (left|right):|assertion|deadlock" "$log" >&2 || true
    else
        echo "loom: FAILED (exit $status); output follows" >&2
        tail -n 60 "$log" >&2
    fi
    exit "$status"
fi
if [ -z "$summary" ]; then
    echo "loom: no test summary found; output follows" >&2
    tail -n 60 "$log" >&2
    exit 1
fi
echo "loom: $summary"
