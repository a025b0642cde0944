#!/usr/bin/env bash
# Runs every Duet test: unit, property, model-checking demonstrations and the end-to-end
# conformance and failover tests against real initiators (libiscsi's tools, installed here if
# missing) and the two-controller lab.
set -euo pipefail
cd "$(dirname "$0")/.."

# libiscsi's tools (real initiators) and, for the failover tests that cut the HA link inside a
# network namespace, iproute2 and iptables.
missing=()
command -v iscsi-test-cu >/dev/null 2>&1 || missing+=(libiscsi-bin)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test-all: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The end-to-end tests start duetd, duetctl and duet-mpio as separate processes: build them first.
cargo build --release -p duet-target -p duet-verification -p duet-hosts --bins
cargo test --workspace --release "$@"

# The loom models of the runtime's shared structures (a separate build with --cfg duet_loom).
./verification/loom.sh
