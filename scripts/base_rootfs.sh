#!/usr/bin/env bash
# Build, once per machine, the root file system the lab's container images are made of:
# Debian bookworm (minbase) with python3 and python3-msgpack, pruned of what a runtime never
# reads. `python -m dataplane.lab.images build` turns it into the reference images.
#
# Why debootstrap: this machine reaches Debian's archive but no container registry, so the
# base image cannot be pulled; debootstrap makes the same thing from .debs.
#
# Idempotent: a rootfs whose stamp records the same request (suite, variant, packages) is kept
# and the script only prints its size. A new one is built in a temporary sibling directory and
# renamed into place, so an interrupted run leaves the old rootfs or none, never half of one.
# The stamp (/etc/service-mobility-rootfs inside the rootfs) also lists every installed
# package with its version; the images' tag hashes it, so new packages make new images.
#
# Environment: MOBILITY_CACHE (default /root/.cache/service-mobility), MOBILITY_DEBIAN_MIRROR
# (default http://deb.debian.org/debian). Needs root and debootstrap. Progress goes to stderr;
# the last line on stdout is the rootfs directory.
set -euo pipefail

say() { printf '[base_rootfs] %s\n' "$*" >&2; }

CACHE=${MOBILITY_CACHE:-/root/.cache/service-mobility}
MIRROR=${MOBILITY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
VARIANT=minbase
PACKAGES=python3,python3-msgpack
DEST="$CACHE/rootfs/$SUITE-python3"
STAMP_PATH=etc/service-mobility-rootfs
REQUEST="suite=$SUITE variant=$VARIANT include=$PACKAGES bytecode=unchecked-hash"

if [ "$(id -u)" -ne 0 ]; then
    say "run as root (debootstrap makes device nodes and chroots)"
    exit 2
fi

if [ -f "$DEST/$STAMP_PATH" ] && [ "$(head -n 1 "$DEST/$STAMP_PATH")" = "$REQUEST" ]; then
    say "rootfs present: $DEST ($(du -sh "$DEST" | cut -f1))"
    echo "$DEST"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

mkdir -p "$(dirname "$DEST")"
TMP=$(mktemp -d "$DEST.tmp.XXXXXX")

# Unmount whatever debootstrap left mounted in the temp tree (proc, sys) before deleting it:
# rm -rf must never walk into a mounted file system.
unmount_under() {
    local root=$1
    awk -v r="$root" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r mp; do umount -l "$mp" 2>/dev/null || true; done
}
cleanup() {
    if [ -n "${TMP:-}" ] && [ -d "$TMP" ]; then
        unmount_under "$TMP"
        rm -rf --one-file-system "$TMP"
    fi
}
trap cleanup EXIT

say "debootstrap --variant=$VARIANT --include=$PACKAGES $SUITE from $MIRROR (about a minute)"
start=$(date +%s)
debootstrap --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$TMP" "$MIRROR" \
    > "$TMP.log" 2>&1 || { say "debootstrap failed; its log:"; tail -n 30 "$TMP.log" >&2; rm -f "$TMP.log"; exit 1; }
rm -f "$TMP.log"
unmount_under "$TMP"
say "debootstrap done in $(( $(date +%s) - start )) s ($(du -sh "$TMP" | cut -f1))"

say "pruning what a runtime does not read"
rm -rf "$TMP"/var/lib/apt/lists/* "$TMP"/var/cache/apt/* "$TMP"/var/cache/debconf/*-old \
       "$TMP"/usr/share/doc/* "$TMP"/usr/share/man/* "$TMP"/usr/share/info/* \
       "$TMP"/usr/share/lintian "$TMP"/var/log/*.log "$TMP"/var/log/apt/*
# Message catalogs: none (the C locale needs none); keep locale.alias, and only C.utf8 of
# the compiled locales.
find "$TMP/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
if [ -d "$TMP/usr/lib/locale" ]; then
    find "$TMP/usr/lib/locale" -mindepth 1 -maxdepth 1 ! -name C.utf8 -exec rm -rf {} +
fi
# Byte code compiled once, here, as unchecked-hash .pyc: the image layers carry a fixed
# mtime, so timestamp-checked byte code would never match its source and every container
# start would compile the standard library again (0.14 s instead of 0.02 s for `import
# argparse, socket, json`); the images are read-only and set PYTHONDONTWRITEBYTECODE.
find "$TMP" -xdev -type d -name __pycache__ -prune -exec rm -rf {} +
chroot "$TMP" python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
    /usr/lib/python3.11 /usr/lib/python3/dist-packages >/dev/null
# Nothing of this machine's identity goes into an image.
: > "$TMP/etc/resolv.conf"
echo localhost > "$TMP/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$TMP/etc/hosts"
rm -f "$TMP/etc/machine-id" && : > "$TMP/etc/machine-id"

{
    echo "$REQUEST"
    echo "mirror=$MIRROR"
    chroot "$TMP" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort
} > "$TMP/$STAMP_PATH"

if [ -e "$DEST" ]; then
    say "replacing the old rootfs (its stamp records another request)"
    mv "$DEST" "$TMP.old"
    mv "$TMP" "$DEST"
    rm -rf --one-file-system "$TMP.old"
else
    mv "$TMP" "$DEST"
fi
TMP=
say "rootfs ready: $DEST ($(du -sh "$DEST" | cut -f1), $(( $(date +%s) - start )) s)"
echo "$DEST"
