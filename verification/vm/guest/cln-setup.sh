#!/bin/sh
# The client host: open-iscsi logged in to both controllers' portals, dm-multipath with ALUA as a
# Linux host attached to a dual-controller array would be configured.
#   ./cln-setup.sh NAME TARGET_IQN PORTAL...
# Prints `multipath -ll`.
set -eu
name=$1 iqn=$2
shift 2
echo "InitiatorName=iqn.2026-12.dev.duet.vmlab:$name" >/etc/iscsi/initiatorname.iscsi
# Fail a dead path over quickly (dm-multipath retries the I/O on the other path group); NOP-Out
# pings find a silent controller.
sed -i \
    -e 's/^#*\s*node.session.timeo.replacement_timeout.*/node.session.timeo.replacement_timeout = 5/' \
    -e 's/^#*\s*node.conn\[0\].timeo.noop_out_interval.*/node.conn[0].timeo.noop_out_interval = 2/' \
    -e 's/^#*\s*node.conn\[0\].timeo.noop_out_timeout.*/node.conn[0].timeo.noop_out_timeout = 3/' \
    /etc/iscsi/iscsid.conf
modprobe scsi_dh_alua
modprobe dm_multipath
modprobe iscsi_tcp
pgrep -x iscsid >/dev/null || iscsid
for p in "$@"; do
    iscsiadm -m discovery -t st -p "$p" >/dev/null
    iscsiadm -m node -T "$iqn" -p "$p" --login >/dev/null
done
udevadm settle --timeout=30 || true
# The LUN's WWID, from the first disk of the first session.
dev=
i=0
while [ -z "$dev" ]; do
    dev=$(ls /sys/class/iscsi_session/*/device/target*/*:*:*:*/block 2>/dev/null | grep -m1 '^sd' || true)
    i=$((i + 1))
    [ $i -le 100 ] || { echo "no SCSI disk after login" >&2; exit 1; }
    [ -n "$dev" ] || sleep 0.2
done
wwid=$(/lib/udev/scsi_id -g -u -d "/dev/$dev")
cat >/etc/multipath.conf <<CONF
defaults {
    user_friendly_names no
    find_multipaths     no
    polling_interval    2
}
blacklist {
    devnode "^vd[a-z]"
}
devices {
    device {
        vendor               "DUET"
        product              ".*"
        path_grouping_policy group_by_prio
        prio                 alua
        hardware_handler     "1 alua"
        path_checker         tur
        path_selector        "round-robin 0"
        failback             immediate
        # Queue while no path is usable, for at most 60 checker intervals (2 min).
        no_path_retry        60
        rr_min_io_rq         1
    }
}
multipaths {
    multipath {
        wwid  "$wwid"
        alias duet0
    }
}
CONF
pgrep -x multipathd >/dev/null || multipathd
i=0
while [ ! -b /dev/mapper/duet0 ]; do
    i=$((i + 1))
    [ $i -le 150 ] || { echo "no /dev/mapper/duet0" >&2; multipath -ll >&2; exit 1; }
    sleep 0.2
done
multipath -r >/dev/null 2>&1 || true
sleep 1
multipath -ll
