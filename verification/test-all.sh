#!/usr/bin/env bash
# Runs every Duet test: unit, property, model-checking demonstrations and the end-to-end
# conformance tests against real initiators (libiscsi's tools, installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v iscsi-test-cu >/dev/null 2>&1; then
    echo "test-all: installing libiscsi-bin (iscsi-test-cu, iscsi-inq, iscsi-ls)" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libiscsi-bin >/dev/null
fi

cargo test --workspace --release "$@"
