#!/bin/bash
# Build (or reuse from cache) a bootable image of Debian's stock kernel for the qemu test tier:
# the vmlinuz of the concrete linux-image-*-amd64 package that `linux-image-amd64` points at,
# and a small initramfs (static busybox + every netfilter module + virtio/9p/veth/bridge and
# their dependencies + tests/kernel/init).
#
# The kernel package is downloaded with `apt-get download` and unpacked into a scratch folder:
# nothing is installed into /boot or /lib/modules. Everything lives outside the repository in
#   $NFSENTRY_KERNEL_CACHE (default /var/cache/nfsentry-kernel, or ~/.cache/nfsentry-kernel
#   when that is not writable)/<package>_<version>/
#       <package>_<version>_amd64.deb      kept so a change to init/this script needs no download
#       img-<hash>/vmlinuz initramfs.cpio.gz kernel-release
# where <hash> covers this script, init and the busybox binary; so a second run only boots.
#
# Prints the image folder as the last line of stdout. Progress goes to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
META=${NFSENTRY_KERNEL_PACKAGE:-linux-image-amd64}
log() { echo "build-image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in busybox apt-cache apt-get dpkg-deb gzip sha256sum flock; do
    command -v "$tool" >/dev/null || die "needs $tool (make deps-test installs busybox-static, cpio, qemu-system-x86)"
done
BUSYBOX=$(command -v busybox)
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' \
    || ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic' \
    || die "$BUSYBOX is not static: install busybox-static"

# --- cache root ------------------------------------------------------------------------------
CACHE=${NFSENTRY_KERNEL_CACHE:-}
if [ -z "$CACHE" ]; then
    CACHE=/var/cache/nfsentry-kernel
    if ! mkdir -p "$CACHE" 2>/dev/null || [ ! -w "$CACHE" ]; then
        CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/nfsentry-kernel
    fi
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 300 9 || die "another build holds $CACHE/.lock"

# --- which kernel ----------------------------------------------------------------------------
resolve() {  # prints "<package> <candidate version>" of the concrete image package, or fails
    local real ver
    real=$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
    [ -n "$real" ] || return 1
    ver=$(apt-cache policy "$real" 2>/dev/null | awk '/Candidate:/{print $2; exit}')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || return 1
    echo "$real $ver"
}
apt_update() {
    [ "$(id -u)" = 0 ] || { log "apt-get update needs root; skipping it"; return 1; }
    log "apt-get update"
    apt-get update -qq >&2
}
newest_cached() {  # the most recently built image folder, for offline runs
    ls -td "$CACHE"/*/img-*/ 2>/dev/null | while read -r d; do
        [ -s "$d/vmlinuz" ] && [ -s "$d/initramfs.cpio.gz" ] && { echo "${d%/}"; break; }
    done
}

if ! PV=$(resolve); then
    apt_update || true
    PV=$(resolve) || {
        d=$(newest_cached)
        [ -n "$d" ] || die "cannot resolve $META with apt-cache and nothing is cached in $CACHE"
        log "cannot resolve $META; using cached $d"
        echo "$d"; exit 0
    }
fi
read -r PKG VER <<<"$PV"
KDIR=$CACHE/${PKG}_${VER//:/%}
mkdir -p "$KDIR"

HASH=$(cat "$HERE/build-image.sh" "$HERE/init" "$BUSYBOX" | sha256sum | cut -c1-12)
IMG=$KDIR/img-$HASH
if [ -s "$IMG/vmlinuz" ] && [ -s "$IMG/initramfs.cpio.gz" ] && [ -s "$IMG/kernel-release" ]; then
    log "cached: $PKG $VER ($IMG)"
    echo "$IMG"; exit 0
fi

# --- download (not install) ----------------------------------------------------------------------
DEB=$(ls "$KDIR"/"${PKG}"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$DEB" ]; then
    log "downloading $PKG $VER"
    # apt-get download runs as the _apt user when it can; give it a folder it may write.
    DL=$(mktemp -d "$KDIR/.dl.XXXXXX"); chmod 755 "$DL"
    if ! (cd "$DL" && apt-get download -q "$PKG=$VER" >&2 2>"$DL/err"); then
        cat "$DL/err" >&2 || true
        # Stale package lists (the version left the mirror): update once and try again.
        apt_update || true
        PV=$(resolve) || die "cannot resolve $META after apt-get update"
        read -r PKG2 VER2 <<<"$PV"
        [ "$PKG2 $VER2" = "$PKG $VER" ] || { rm -rf "$DL"; log "kernel changed to $PKG2 $VER2; rerunning"; exec "$0" "$@"; }
        (cd "$DL" && apt-get download -q "$PKG=$VER" >&2) || { rm -rf "$DL"; die "apt-get download $PKG=$VER failed"; }
    fi
    mv "$DL"/*.deb "$KDIR"/ && rm -rf "$DL"
    DEB=$(ls "$KDIR"/"${PKG}"_*.deb | head -1)
fi

# --- unpack, pick modules, pack the initramfs ------------------------------------------------------
WORK=$(mktemp -d "$KDIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log "unpacking $(basename "$DEB")"
dpkg-deb -x "$DEB" "$WORK/pkg"
KV=$(ls "$WORK/pkg/lib/modules" | head -1)
[ -n "$KV" ] && [ -f "$WORK/pkg/boot/vmlinuz-$KV" ] || die "unexpected package layout in $DEB"
FULL=$WORK/pkg/lib/modules/$KV
[ -f "$FULL/modules.dep" ] || "$BUSYBOX" depmod -b "$WORK/pkg" "$KV"   # the .deb ships no modules.dep

# Every netfilter module (kernel autoload through busybox modprobe then finds whatever a ruleset
# needs), plus what the guest and the namespace lab need.
WANT=$( cd "$FULL" && {
    find kernel/net/netfilter kernel/net/ipv4/netfilter kernel/net/ipv6/netfilter \
         kernel/net/bridge/netfilter -name '*.ko*'
    for m in drivers/virtio/virtio_pci net/9p/9pnet_virtio fs/9p/9p drivers/net/veth \
             drivers/net/dummy net/bridge/bridge crypto/crc32c_generic \
             drivers/char/hw_random/virtio-rng net/ipv4/inet_diag net/ipv4/tcp_diag \
             net/ipv4/udp_diag net/ipv4/raw_diag; do
        ls kernel/$m.ko* 2>/dev/null || true
    done; } | sort -u)
CLOSURE=$(for m in $WANT; do grep -E "^$m:" "$FULL/modules.dep" | tr -d ':' | tr ' ' '\n'; done | grep . | sort -u)

R=$WORK/root
mkdir -p "$R"/{bin,dev,proc,sys,host,lib/modules/$KV}
ln -s bin "$R/sbin"
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$BUSYBOX" --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
for m in $CLOSURE; do
    mkdir -p "$R/lib/modules/$KV/$(dirname "$m")"
    cp "$FULL/$m" "$R/lib/modules/$KV/$m"
done
cp "$FULL"/modules.builtin "$FULL"/modules.order "$R/lib/modules/$KV/" 2>/dev/null || true
"$BUSYBOX" depmod -b "$R" "$KV"
install -m 755 "$HERE/init" "$R/init"

mkdir -p "$WORK/img"
(cd "$R" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) > "$WORK/img/initramfs.cpio.gz"
cp "$WORK/pkg/boot/vmlinuz-$KV" "$WORK/img/vmlinuz"
echo "$KV" > "$WORK/img/kernel-release"
echo "$PKG $VER" > "$WORK/img/package"
rm -rf "$IMG" && mv "$WORK/img" "$IMG"
# Only the current image per kernel is kept.
for old in "$KDIR"/img-*; do [ "$old" = "$IMG" ] || rm -rf "$old"; done
log "built $PKG $VER: kernel $KV, $(echo "$CLOSURE" | wc -l) modules, initramfs $(du -h "$IMG/initramfs.cpio.gz" | cut -f1)"
echo "$IMG"
