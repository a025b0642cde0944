#!/usr/bin/env bash
# verification/vm/build.sh: the virtual lab's guest image (kernel, initrd, raw ext4 root file
# system), built once and cached.
#
#   verification/vm/build.sh [--force] [--print-dir]
#
# Installs what the lab needs on a Debian bookworm host (as root, through apt's own
# configuration), then builds a bookworm root file system with mmdebstrap --variant=minbase from
# the packages in packages.txt plus the guest init (image/duet-init), and turns it into a raw ext4
# image with `mkfs.ext4 -d` (no loop mount). The initrd holds only what mounts the root file
# system (virtio, ext4): a TCG guest unpacks a large one slowly. The result lives in
# ${DUET_VM_CACHE:-/var/cache/duet-vm}/<hash>/, where <hash> covers every input (this script,
# packages.txt, image/*): it is rebuilt only when one of them changes, and older builds are
# removed. An interrupted or failed build leaves nothing behind. The last line printed is the
# image directory.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${DUET_VM_CACHE:-/var/cache/duet-vm}"
SUITE=bookworm
IMAGE_SIZE=1536M
FORCE=0
for a in "$@"; do
    case "$a" in
        --force) FORCE=1 ;;
        --print-dir) ;;
        -h | --help)
            sed -n '2,13p' "$0"
            exit 0
            ;;
        *)
            echo "build.sh: unknown argument $a" >&2
            exit 2
            ;;
    esac
done

T0=$(date +%s)
log() { echo "[build $(date -u +%H:%M:%S) +$(($(date +%s) - T0))s] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, apt-get)"

# ---- host packages --------------------------------------------------------------------------
# qemu-system-x86 of bookworm (7.2) conflicts with a newer qemu-utils (this machine's image has
# one from backports): when qemu-utils is installed, replace it by bookworm's in the same
# command so that qemu-img stays available. The lab itself needs no qemu-img (guests run on
# snapshot=on drives).
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v tgtd >/dev/null 2>&1 || need+=(tgt)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    if printf '%s\n' "${need[@]}" | grep -qx qemu-system-x86 &&
        dpkg-query -W -f='${Status}' qemu-utils 2>/dev/null | grep -q 'install ok installed'; then
        need+=("qemu-utils/$SUITE")
    fi
    log "installing ${need[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends --allow-downgrades "${need[@]}" >&2
fi

# ---- cache key ------------------------------------------------------------------------------
packages=$(grep -v '^\s*#' "$HERE/packages.txt" | tr -s ' \n' '\n' | grep -v '^$' | sort -u | paste -sd, -)
hash=$({
    cat "$0" "$HERE/packages.txt"
    for f in "$HERE"/image/*; do
        echo "== $(basename "$f")"
        cat "$f"
    done
} | sha256sum | cut -c1-16)
OUT="$CACHE/$hash"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 1800 9 || die "another build holds $CACHE/.lock"

if [ "$FORCE" = 0 ] && [ -f "$OUT/ok" ]; then
    log "image up to date: $OUT"
    echo "$OUT"
    exit 0
fi

WORK="$CACHE/.build-$hash-$$"
cleanup() {
    rc=$?
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        # mmdebstrap unmounts what it mounted; make sure before removing anything.
        for m in $(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
            umount -l "$m" 2>/dev/null || true
        done
        rm -rf --one-file-system "$WORK"
    fi
    [ $rc = 0 ] || log "build failed (exit $rc); partial output removed"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mkdir -p "$WORK"
ROOT="$WORK/root"
log "mmdebstrap $SUITE minbase + $packages (about 2 minutes here)"
sources=()
for s in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$s" ] && sources+=("$s")
done
[ ${#sources[@]} -gt 0 ] || die "no apt sources on this host"
mmdebstrap --variant=minbase --mode=root \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --include="$packages" \
    --customize-hook='rm -f "$1"/etc/iscsi/initiatorname.iscsi "$1"/etc/machine-id' \
    --customize-hook='printf "MODULES=list\nCOMPRESS=gzip\n" >"$1"/etc/initramfs-tools/conf.d/duet-vm' \
    --customize-hook='printf "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n" >>"$1"/etc/initramfs-tools/modules' \
    --customize-hook='chroot "$1" update-initramfs -u -k all' \
    "$SUITE" "$ROOT" "${sources[@]}" >"$WORK/mmdebstrap.log" 2>&1 ||
    {
        tail -n 30 "$WORK/mmdebstrap.log" >&2
        die "mmdebstrap failed"
    }
log "root file system: $(du -sm "$ROOT" | cut -f1) MB"

install -m 0755 "$HERE/image/duet-init" "$ROOT/sbin/duet-init"
mkdir -p "$ROOT/duet" "$ROOT/out"
vmlinuz=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n1)
[ -f "$vmlinuz" ] && [ -f "$initrd" ] || die "no kernel or initrd in the root file system"
cp "$vmlinuz" "$WORK/vmlinuz"
cp "$initrd" "$WORK/initrd.img"
log "kernel $(basename "$vmlinuz"); making the ext4 image ($IMAGE_SIZE, sparse)"
mkfs.ext4 -q -F -L duet-root -E root_owner=0:0 -d "$ROOT" "$WORK/rootfs.img" "$IMAGE_SIZE"
rm -rf --one-file-system "$ROOT"
echo "$packages" >"$WORK/packages"
date -u +%FT%TZ >"$WORK/ok"
rm -rf "$OUT"
mv "$WORK" "$OUT"
WORK=
# Older builds are of no use: remove them.
for d in "$CACHE"/*/; do
    d="${d%/}"
    [ "$d" = "$OUT" ] || rm -rf --one-file-system "$d"
done
log "image ready in $OUT ($(du -sm "$OUT" | cut -f1) MB on disk)"
echo "$OUT"
