#!/usr/bin/env bash
# Boot a QEMU guest with a running vublk as its virtio-blk disk.
#
#   npm start                                   # terminal 1: serves ./vublk-disk.img on ./vublk.sock
#   examples/qemu-attach.sh -- -drive file=boot.qcow2,if=virtio -nographic
#                                               # terminal 2: the guest sees the vublk disk as a /dev/vdX
#
# Options (before "--"):
#   --socket PATH   vublk's socket (default ./vublk.sock)
#   --mem SIZE      guest RAM, as QEMU's -m takes it (default 1G)
#   --queues N      num-queues of the device; at most vublk's --queues (default 1)
#   --queue-size N  descriptors per virtqueue, a power of two up to 1024; at most vublk's
#                   --queue-size (default 1024) (default: QEMU's own, 128 or 256)
#   --accel A       kvm or tcg (default kvm when /dev/kvm is usable, else tcg)
#   --dry-run       print the QEMU command line instead of running it
# Everything after "--" is passed to QEMU unchanged: a boot disk, or
# -kernel/-initrd/-append, -nographic, -smp, networking, ...
#
# What the vublk part of the command line means:
#   -object memory-backend-memfd,...,share=on -numa node,memdev=mem
#       Guest RAM in a shared memfd, so QEMU can pass it to vublk over the
#       socket. vhost-user cannot work without it; size must equal -m.
#   -chardev socket,...,reconnect=1   (reconnect-ms=1000 on QEMU 9.2 and later)
#       QEMU is the client; when vublk restarts it reconnects within a second
#       and the guest carries on (see "Restarts and reconnects" in README.md).
#   -device vhost-user-blk-pci,chardev=...,num-queues=N[,queue-size=N]
#       The virtio-blk PCI device whose queues vublk serves. For multiqueue
#       I/O give the guest at least N vCPUs (-smp N).
set -euo pipefail

socket=./vublk.sock
mem=1G
queues=1
queue_size=
accel=
dry_run=0

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  printf 'qemu-attach: %s\n' "$*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --socket) [ $# -ge 2 ] || die "--socket expects a path"; socket=$2; shift 2 ;;
    --mem) [ $# -ge 2 ] || die "--mem expects a size"; mem=$2; shift 2 ;;
    --queues) [ $# -ge 2 ] || die "--queues expects a number"; queues=$2; shift 2 ;;
    --queue-size) [ $# -ge 2 ] || die "--queue-size expects a number"; queue_size=$2; shift 2 ;;
    --accel) [ $# -ge 2 ] || die "--accel expects kvm or tcg"; accel=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (QEMU arguments go after --; see --help)" ;;
  esac
done

case $queues in
  '' | *[!0-9]*) die "--queues expects a number, got '$queues'" ;;
esac
queues=$((10#$queues))
if [ "$queues" -lt 1 ] || [ "$queues" -gt 64 ]; then die "--queues expects 1..64, got $queues"; fi
device_extra=
if [ -n "$queue_size" ]; then
  case $queue_size in
    *[!0-9]*) die "--queue-size expects a number, got '$queue_size'" ;;
  esac
  queue_size=$((10#$queue_size))
  if [ "$queue_size" -lt 2 ] || [ "$queue_size" -gt 1024 ] || [ $((queue_size & (queue_size - 1))) -ne 0 ]; then
    die "--queue-size expects a power of two in 2..1024, got $queue_size"
  fi
  device_extra=",queue-size=$queue_size"
fi

if [ "$dry_run" -eq 0 ]; then
  [ -S "$socket" ] || die "no vublk socket at $socket (start vublk first: npm start)"
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
fi

# KVM when this user may use it, otherwise TCG (slow, but works anywhere).
if [ -z "$accel" ]; then
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then accel=kvm; else accel=tcg; fi
fi
case $accel in
  kvm) accel_args=(-accel kvm -cpu host) ;;
  tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
  *) die "--accel expects kvm or tcg, got '$accel'" ;;
esac

# QEMU 9.2 deprecated reconnect=SECONDS in favour of reconnect-ms.
reconnect='reconnect=1'
if command -v qemu-system-x86_64 >/dev/null; then
  read -r qmajor qminor < <(qemu-system-x86_64 --version |
    sed -n 's/.*version \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p;q') || true
  if [ -n "${qmajor:-}" ] && { [ "$qmajor" -gt 9 ] || { [ "$qmajor" -eq 9 ] && [ "$qminor" -ge 2 ]; }; }; then
    reconnect='reconnect-ms=1000'
  fi
fi

# QEMU's chardev option syntax splits on commas: an absolute path without
# commas keeps it simple.
socket_abs=$(realpath -m -- "$socket")
case $socket_abs in *,*) die "the socket path must not contain a comma: $socket_abs" ;; esac

cmd=(
  qemu-system-x86_64
  "${accel_args[@]}"
  -m "$mem"
  -object "memory-backend-memfd,id=mem,size=$mem,share=on"
  -numa 'node,memdev=mem'
  -chardev "socket,id=vublk0,path=$socket_abs,$reconnect"
  -device "vhost-user-blk-pci,chardev=vublk0,num-queues=$queues$device_extra"
  "$@"
)

if [ "$dry_run" -eq 1 ]; then
  out=
  for a in "${cmd[@]}"; do
    case $a in
      *[!A-Za-z0-9_./,=:+@%-]*) a="'${a//\'/\'\\\'\'}'" ;;
    esac
    out+="$a "
  done
  printf '%s\n' "${out% }"
  exit 0
fi
exec "${cmd[@]}"
