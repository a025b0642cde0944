#!/bin/sh
# A controller attaches the shared disks of the SAN (tgt) with open-iscsi, as it would a back-end
# array's LUNs: ./san-login.sh NAME SAN_PORTAL SAN_IQN. Prints the by-path names of LUN 1 (data)
# and LUN 2 (quorum).
set -eu
name=$1 portal=$2 iqn=$3
echo "InitiatorName=iqn.2026-12.dev.duet.vmlab:$name" >/etc/iscsi/initiatorname.iscsi
modprobe iscsi_tcp
modprobe sg 2>/dev/null || true
pgrep -x iscsid >/dev/null || iscsid
iscsiadm -m discovery -t st -p "$portal" >/dev/null
iscsiadm -m node -T "$iqn" -p "$portal" --login >/dev/null
udevadm settle --timeout=30 || true
for lun in 1 2; do
    p="/dev/disk/by-path/ip-$portal:3260-iscsi-$iqn-lun-$lun"
    i=0
    while [ ! -b "$p" ]; do
        i=$((i + 1))
        [ $i -le 150 ] || { echo "no $p" >&2; exit 1; }
        sleep 0.2
    done
    echo "$p -> $(readlink -f "$p")"
done
