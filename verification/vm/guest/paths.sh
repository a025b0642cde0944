#!/bin/sh
# One line per iSCSI session: portal address and SCSI disk.
for s in /sys/class/iscsi_session/session*; do
    n=${s##*session}
    addr=$(cat /sys/class/iscsi_connection/connection$n:0/persistent_address 2>/dev/null)
    dev=$(ls $s/device/target*/*:*:*:*/block 2>/dev/null | head -n1)
    echo "$addr $dev"
done
