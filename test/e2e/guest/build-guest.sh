#!/usr/bin/env bash
# Build (and cache) a tiny guest for the vublk QEMU end-to-end tests:
#   $CACHE/vmlinuz            Debian bookworm kernel (linux-image-6.1.0-N-amd64-unsigned)
#   $CACHE/initramfs.cpio.gz  busybox-static + fio + e2fsprogs + blkdiscard/fstrim + modules + /init
#   $CACHE/kernel-version     e.g. 6.1.0-56-amd64
#   $CACHE/stamp              sha256 of this script (cache key)
#
# CACHE = ${VUBLK_GUEST_CACHE:-$HOME/.cache/vublk/guest}
# Optional: VUBLK_GUEST_KERNEL_DEB=/path/to/linux-image-...-unsigned.deb skips the apt download.
#
# /init mounts proc/sys/devtmpfs, insmods the modules (order from modules.dep),
# waits for /dev/vda, runs /test.sh (supplied per run as a second cpio archive
# concatenated after this one), then prints exactly one line
#   VUBLK-E2E-RESULT: PASS            or
#   VUBLK-E2E-RESULT: FAIL <reason>
# on the serial console, syncs and powers off.
#
# Protocol for /test.sh: exit 0 = pass; non-zero = fail. A script may write a
# one-line reason to /run/vublk-e2e-fail-reason before exiting non-zero.
#
# Everything this script says goes to stderr. Host needs: apt-get, apt-cache,
# dpkg-deb, cpio, gzip, ldd, busybox-static, fio, e2fsprogs, util-linux. Root is not needed.
set -euo pipefail

log() { printf 'build-guest: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_SHA=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)
CACHE=${VUBLK_GUEST_CACHE:-$HOME/.cache/vublk/guest}

cache_ok() {
  [[ -s $CACHE/vmlinuz && -s $CACHE/initramfs.cpio.gz && -f $CACHE/stamp ]] &&
    [[ $(cat "$CACHE/stamp") == "$SCRIPT_SHA" ]]
}

if cache_ok; then
  log "cache hit in $CACHE (kernel $(cat "$CACHE/kernel-version" 2>/dev/null || echo '?'))"
  exit 0
fi

mkdir -p "$CACHE"
# Serialise concurrent builders (parallel test files).
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
  log "waiting for lock $CACHE/.lock"
  flock 9
  if cache_ok; then
    log "cache filled by a concurrent build"
    exit 0
  fi
fi

for tool in apt-cache apt-get dpkg-deb cpio gzip ldd sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "missing host tool: $tool"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/vublk-guest-build.XXXXXX")
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT

# ---------------------------------------------------------------- kernel ---
if [[ -n ${VUBLK_GUEST_KERNEL_DEB:-} ]]; then
  DEB=$(readlink -f "$VUBLK_GUEST_KERNEL_DEB")
  log "using kernel package $DEB"
else
  find_abi() {
    apt-cache depends linux-image-amd64 2>/dev/null |
      sed -n 's/^ *Depends: linux-image-\(6\.1\.0-[0-9][0-9]*\)-amd64$/\1/p' | head -n1
  }
  ABI=$(find_abi || true)
  if [[ -z $ABI ]]; then
    log "linux-image-amd64 not in apt cache; running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    ABI=$(find_abi || true)
  fi
  [[ -n $ABI ]] || die "could not resolve linux-image-6.1.0-N-amd64 from 'apt-cache depends linux-image-amd64'"
  PKG="linux-image-${ABI}-amd64-unsigned"
  log "downloading $PKG"
  (cd "$TMP" && apt-get download -q "$PKG" >&2 2> >(grep -v 'Download is performed unsandboxed' >&2)) ||
    die "apt-get download $PKG failed"
  DEB=$(ls "$TMP"/"$PKG"_*.deb)
fi

log "extracting $(basename "$DEB")"
dpkg-deb -x "$DEB" "$TMP/kpkg"
KVER=$(ls "$TMP/kpkg/lib/modules" | head -n1)
[[ -n $KVER ]] || die "no /lib/modules/<version> in kernel package"
KCONFIG="$TMP/kpkg/boot/config-$KVER"
VMLINUZ="$TMP/kpkg/boot/vmlinuz-$KVER"
[[ -f $VMLINUZ && -f $KCONFIG ]] || die "kernel package lacks vmlinuz/config for $KVER"
KMOD="$TMP/kpkg/lib/modules/$KVER"
log "kernel $KVER"

cfg() { sed -n "s/^CONFIG_$1=\(.*\)$/\1/p" "$KCONFIG"; }
for opt in BLK_DEV_INITRD RD_GZIP DEVTMPFS SERIAL_8250_CONSOLE AIO; do
  [[ $(cfg "$opt") == y ]] || die "kernel config: CONFIG_$opt is not =y"
done

# ---------------------------------------------------------------- rootfs ---
ROOT="$TMP/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib64,etc,proc,sys,dev,tmp,run,mnt,root}
chmod 1777 "$ROOT/tmp"

# busybox: prefer the busybox-static binary.
BUSYBOX=
for cand in /bin/busybox /usr/bin/busybox; do
  if [[ -x $cand ]] && ! ldd "$cand" >/dev/null 2>&1; then BUSYBOX=$cand; break; fi
done
[[ -n $BUSYBOX ]] || die "no statically linked busybox found (apt-get install busybox-static)"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
  [[ $applet == busybox ]] && continue
  ln -sf busybox "$ROOT/bin/$applet"
done
log "busybox $("$ROOT/bin/busybox" | head -n1 | cut -d' ' -f2) with $("$ROOT/bin/busybox" --list | wc -l) applets"

# Dynamic executables (+ their libraries + the loader). Real tools live in
# /usr/{s,}bin, which come first in the guest's PATH, ahead of busybox applets.
copy_file() { # src dst(absolute path inside ROOT)
  mkdir -p "$ROOT$(dirname "$2")"
  cp -L "$1" "$ROOT$2"
}
copy_libs() {
  local bin=$1 lib
  while read -r lib; do
    [[ -n $lib ]] || continue
    [[ -e $ROOT$lib ]] && continue
    copy_file "$lib" "$lib"
  done < <(ldd "$bin" | sed -n -e 's/^.*=> \(\/[^ ]*\) (0x.*$/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x.*$/\1/p')
}
add_bin() { # host-path guest-path
  [[ -x $1 ]] || die "missing host binary $1"
  copy_file "$1" "$2"
  copy_libs "$1"
}
find_bin() { local p; p=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$1") || die "host lacks $1"; readlink -f "$p"; }

add_bin "$(find_bin fio)"        /usr/bin/fio
add_bin "$(find_bin mke2fs)"     /usr/sbin/mke2fs
ln -sf mke2fs "$ROOT/usr/sbin/mkfs.ext4"
add_bin "$(find_bin e2fsck)"     /usr/sbin/e2fsck
ln -sf e2fsck "$ROOT/usr/sbin/fsck.ext4"
add_bin "$(find_bin blkdiscard)" /usr/sbin/blkdiscard
add_bin "$(find_bin fstrim)"     /usr/sbin/fstrim
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$ROOT/etc/mke2fs.conf"
[[ -e $ROOT/lib64/ld-linux-x86-64.so.2 ]] || die "dynamic loader was not copied"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
log "userspace: $(du -sh "$ROOT" | cut -f1) before modules"

# --------------------------------------------------------------- modules ---
# Modules we want. Whether each is =m or =y is checked against the config;
# built-in ones are simply skipped.
declare -A WANT_CFG=(
  [virtio_ring]=VIRTIO
  [virtio]=VIRTIO
  [virtio_pci_legacy_dev]=VIRTIO_PCI_LIB_LEGACY
  [virtio_pci_modern_dev]=VIRTIO_PCI_LIB
  [virtio_pci]=VIRTIO_PCI
  [virtio_blk]=VIRTIO_BLK
  [crc16]=CRC16
  [mbcache]=FS_MBCACHE
  [jbd2]=JBD2
  [ext4]=EXT4_FS
  [crc32c_generic]=CRYPTO_CRC32C
  [crc32c_intel]=CRYPTO_CRC32C_INTEL
)
# Load order requested from /init (deps are pulled in via modules.dep).
# crc32c is a softdep of ext4/jbd2 (metadata_csum), so it goes first.
LOAD_ORDER=(crc32c_generic crc32c_intel virtio_pci virtio_blk ext4)
OPTIONAL=" crc32c_intel "  # needs SSE4.2; failure to load is tolerated

declare -A MODPATH=()   # name -> path relative to $KMOD
while IFS= read -r -d '' f; do
  rel=${f#"$KMOD"/}
  base=$(basename "$f"); base=${base%%.ko*}; base=${base//-/_}
  MODPATH[$base]=$rel
done < <(find "$KMOD/kernel" -name '*.ko*' -print0)

modinfo_field() { # file field ; handles .ko, .ko.xz, .ko.zst, .ko.gz
  local f=$1 cat=cat
  case $f in *.xz) cat='xz -dc';; *.zst) cat='zstd -dc';; *.gz) cat='gzip -dc';; esac
  local out
  # No early exit (sed q / head) here: SIGPIPE upstream would trip pipefail.
  out=$($cat "$f" | tr '\0' '\n' | sed -n "s/^$2=//p")
  printf '%s\n' "${out%%$'\n'*}"
}

declare -A INCLUDED=() DEPS=()
include_mod() {
  local m=${1//-/_} rel d
  [[ -n ${INCLUDED[$m]:-} ]] && return 0
  rel=${MODPATH[$m]:-}
  if [[ -z $rel ]]; then
    if grep -qx "kernel/.*/${m}.ko" "$KMOD/modules.builtin" 2>/dev/null ||
       grep -q "/${m//_/[-_]}.ko$" "$KMOD/modules.builtin" 2>/dev/null; then
      log "module $m is built in"
      INCLUDED[$m]=builtin
      return 0
    fi
    die "module $m not found in package"
  fi
  INCLUDED[$m]=$rel
  DEPS[$m]=$(modinfo_field "$KMOD/$rel" depends | tr ',' ' ')
  for d in ${DEPS[$m]}; do include_mod "$d"; done
}

for m in "${!WANT_CFG[@]}"; do
  v=$(cfg "${WANT_CFG[$m]}")
  case $v in
    m) include_mod "$m" ;;
    y) log "CONFIG_${WANT_CFG[$m]}=y ($m built in)"; INCLUDED[$m]=builtin ;;
    *) [[ $OPTIONAL == *" $m "* ]] && continue
       die "CONFIG_${WANT_CFG[$m]} is '${v:-unset}', needed for $m" ;;
  esac
done

GKMOD="$ROOT/lib/modules/$KVER"
mkdir -p "$GKMOD"
# Copy (decompressed: busybox insmod only reads plain .ko reliably).
for m in "${!INCLUDED[@]}"; do
  rel=${INCLUDED[$m]}
  [[ $rel == builtin ]] && continue
  out=${rel%.xz}; out=${out%.zst}; out=${out%.gz}
  mkdir -p "$GKMOD/$(dirname "$out")"
  case $rel in
    *.xz) xz -dc "$KMOD/$rel" >"$GKMOD/$out" ;;
    *.zst) zstd -qdc "$KMOD/$rel" >"$GKMOD/$out" ;;
    *.gz) gzip -dc "$KMOD/$rel" >"$GKMOD/$out" ;;
    *) cp "$KMOD/$rel" "$GKMOD/$out" ;;
  esac
  INCLUDED[$m]=$out
done

# modules.dep (depmod format: "mod.ko: dep1.ko dep2.ko", transitive, deps of
# deps listed after their users, so loading right-to-left is correct).
declare -A CLOSURE_SEEN=()
CLOSURE=()
closure() { # post-order DFS; result in CLOSURE (load order)
  local m=$1 d
  for d in ${DEPS[$m]:-}; do
    d=${d//-/_}
    [[ -n ${CLOSURE_SEEN[$d]:-} ]] && continue
    CLOSURE_SEEN[$d]=1
    closure "$d"
    [[ ${INCLUDED[$d]} == builtin ]] || CLOSURE+=("${INCLUDED[$d]}")
  done
}
: >"$GKMOD/modules.dep"
for m in $(printf '%s\n' "${!INCLUDED[@]}" | sort); do
  [[ ${INCLUDED[$m]} == builtin ]] && continue
  CLOSURE_SEEN=(); CLOSURE=()
  closure "$m"
  rev=()
  for ((i=${#CLOSURE[@]}-1; i>=0; i--)); do rev+=("${CLOSURE[$i]}"); done
  printf '%s:%s\n' "${INCLUDED[$m]}" "${rev[*]/#/ }" >>"$GKMOD/modules.dep"
done
sed -i 's/:  */: /; s/  */ /g' "$GKMOD/modules.dep"
log "modules.dep:"; sed 's/^/    /' "$GKMOD/modules.dep" >&2

: >"$ROOT/etc/vublk-modules"
for m in "${LOAD_ORDER[@]}"; do
  [[ -n ${INCLUDED[$m]:-} && ${INCLUDED[$m]} != builtin ]] || continue
  opt=required; [[ $OPTIONAL == *" $m "* ]] && opt=optional
  printf '%s %s\n' "${INCLUDED[$m]}" "$opt" >>"$ROOT/etc/vublk-modules"
done
echo "$KVER" >"$ROOT/etc/vublk-kernel-version"

# ------------------------------------------------------------------ init ---
cat >"$ROOT/init" <<'INIT'
#!/bin/sh
# vublk e2e guest init (generated by test/e2e/guest/build-guest.sh)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
say() { echo "vublk-init: $*" >&2; }
result() {
  sync
  printf '\nVUBLK-E2E-RESULT: %s\n' "$*"
  sync
  poweroff -f
  sleep 5
  echo b >/proc/sysrq-trigger
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs tmpfs /run
say "kernel $(uname -r), $(nproc) cpus, $(sed -n 's/^MemTotal: *//p' /proc/meminfo) RAM"

KVER=$(uname -r)
MDIR=/lib/modules/$KVER
loaded() { n=$(basename "$1"); n=${n%.ko}; n=$(echo "$n" | tr - _); [ -d "/sys/module/$n" ]; }
load_one() { # path relative to MDIR
  loaded "$1" && return 0
  insmod "$MDIR/$1"
}
modfail=
while read -r mod opt; do
  [ -n "$mod" ] || continue
  deps=$(sed -n "s|^$mod:||p" "$MDIR/modules.dep")
  rev=
  for d in $deps; do rev="$d $rev"; done
  ok=1
  for d in $rev; do load_one "$d" || ok=; done
  [ -n "$ok" ] && load_one "$mod" || ok=
  if [ -z "$ok" ]; then
    if [ "$opt" = optional ]; then say "optional module $mod failed to load (ignored)"
    else modfail="$modfail $mod"; fi
  fi
done </etc/vublk-modules
say "modules loaded: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
[ -z "$modfail" ] || result "FAIL insmod failed:$modfail"

[ -f /test.sh ] || result "FAIL no /test.sh in initramfs"

i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if [ -b /dev/vda ]; then
  say "/dev/vda: $(cat /sys/block/vda/size) sectors, lbs $(cat /sys/block/vda/queue/logical_block_size), $(ls /sys/block/vda/mq | wc -l) hw queues"
else
  say "no /dev/vda after 30s (test.sh decides whether that matters)"
fi

say "running /test.sh"
sh /test.sh
rc=$?
sync
if [ $rc -eq 0 ]; then
  result PASS
else
  reason=$(head -n1 /run/vublk-e2e-fail-reason 2>/dev/null)
  result "FAIL ${reason:-/test.sh exited with status $rc}"
fi
INIT
chmod 755 "$ROOT/init"

# ---------------------------------------------------------------- output ---
log "packing initramfs"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
  gzip -6 >"$TMP/initramfs.cpio.gz"
cp "$VMLINUZ" "$TMP/vmlinuz"

rm -f "$CACHE/stamp"
mv -f "$TMP/vmlinuz" "$CACHE/vmlinuz"
mv -f "$TMP/initramfs.cpio.gz" "$CACHE/initramfs.cpio.gz"
echo "$KVER" >"$CACHE/kernel-version"
echo "$SCRIPT_SHA" >"$CACHE/stamp"
log "done: $CACHE/vmlinuz ($(du -h "$CACHE/vmlinuz" | cut -f1)), $CACHE/initramfs.cpio.gz ($(du -h "$CACHE/initramfs.cpio.gz" | cut -f1)), kernel $KVER"
