#!/usr/bin/env bash
# Boot a small Linux guest on a running vublk and run one fio job in it.
#
#   npm start                          # terminal 1: serves ./vublk-disk.img on ./vublk.sock
#   examples/guest-fio.sh -- --rw=randread --bs=4k --iodepth=32 --runtime=10 --time_based
#   examples/guest-fio.sh --socket /run/vublk/data.sock --queues 2 --job my.fio
#
# fio's report goes to stdout; what the script says goes to stderr. The
# vublk disk is /dev/vda in the guest. fio gets these global options first,
# so the job may override any of them:
#   --filename=/dev/vda --ioengine=libaio --direct=1 --group_reporting=1
# and --name=guest-fio when the fio options after "--" name no job.
#
# Options (before "--"):
#   --socket PATH   vublk's socket (default ./vublk.sock)
#   --queues N      num-queues of the device; at most vublk's --queues (default 1)
#   --smp N         guest vCPUs (default: N of --queues)
#   --mem SIZE      guest RAM, as QEMU's -m takes it (default 1G)
#   --accel A       kvm or tcg (default kvm when /dev/kvm is usable, else tcg)
#   --job FILE      a fio job file, run as it is (fio options after "--" still apply)
#   --timeout SECS  stop the guest after this long and fail (default 900)
#   --verbose       copy the guest's console to stderr as it runs
# Everything after "--" goes to fio in the guest.
#
# The guest is the one the end-to-end tests use: a Debian kernel and a
# busybox + fio initramfs that test/e2e/guest/build-guest.sh builds once
# (downloading the kernel package) into ${VUBLK_GUEST_CACHE:-~/.cache/vublk/guest}.
# This script appends /test.sh (and /job.fio) to that initramfs as a second
# cpio archive; the guest's /init runs /test.sh and ends with one line,
#   VUBLK-E2E-RESULT: PASS   or   VUBLK-E2E-RESULT: FAIL <reason>
# then powers off. QEMU is started by examples/qemu-attach.sh.
#
# Exit status: 0 when fio succeeded, 1 when fio failed or the guest did not
# report (timeout, QEMU error), 2 for a bad command line or missing tools.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build_guest=$here/../test/e2e/guest/build-guest.sh
cache=${VUBLK_GUEST_CACHE:-$HOME/.cache/vublk/guest}

socket=./vublk.sock
queues=1
smp=
mem=1G
accel=
job=
timeout_secs=900
verbose=0

usage() {
  sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'
}

say() {
  printf 'guest-fio: %s\n' "$*" >&2
}

die() {
  say "$*"
  exit 2
}

positive() { # NAME VALUE: VALUE is a whole number >= 1
  case $2 in
    '' | *[!0-9]*) die "$1 expects a whole number, got '$2'" ;;
  esac
  [ $((10#$2)) -ge 1 ] || die "$1 expects a number of at least 1, got '$2'"
}

while [ $# -gt 0 ]; do
  case $1 in
    --socket) [ $# -ge 2 ] || die "--socket expects a path"; socket=$2; shift 2 ;;
    --queues) [ $# -ge 2 ] || die "--queues expects a number"; queues=$2; shift 2 ;;
    --smp) [ $# -ge 2 ] || die "--smp expects a number"; smp=$2; shift 2 ;;
    --mem) [ $# -ge 2 ] || die "--mem expects a size"; mem=$2; shift 2 ;;
    --accel) [ $# -ge 2 ] || die "--accel expects kvm or tcg"; accel=$2; shift 2 ;;
    --job) [ $# -ge 2 ] || die "--job expects a fio job file"; job=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die "--timeout expects seconds"; timeout_secs=$2; shift 2 ;;
    --verbose) verbose=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (fio options go after --; see --help)" ;;
  esac
done
fio_args=("$@")

positive --queues "$queues"
positive --timeout "$timeout_secs"
if [ -n "$smp" ]; then positive --smp "$smp"; else smp=$((10#$queues)); fi
if [ -z "$job" ] && [ ${#fio_args[@]} -eq 0 ]; then
  die "no fio job: give fio options after -- (e.g. -- --rw=randread --bs=4k --runtime=10) or --job FILE"
fi
if [ -n "$job" ] && [ ! -f "$job" ]; then die "--job: no such file: $job"; fi
[ -S "$socket" ] || die "no vublk socket at $socket (start vublk first: npm start)"
for tool in cpio gzip timeout qemu-system-x86_64; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

# ------------------------------------------------------------- the guest ---
# build-guest.sh returns at once when its cache is current; otherwise it
# builds the guest (a few minutes, once). Without the repository's build
# script a cache built earlier is used as it is.
if [ -f "$build_guest" ]; then
  [ -s "$cache/initramfs.cpio.gz" ] || say "building the guest into $cache (once; takes a few minutes)"
  build_log=$(mktemp "${TMPDIR:-/tmp}/guest-fio-build.XXXXXX")
  if ! VUBLK_GUEST_CACHE=$cache bash "$build_guest" 2>"$build_log"; then
    tail -n 20 "$build_log" >&2
    rm -f "$build_log"
    say "building the guest failed (test/e2e/guest/build-guest.sh; see above)"
    exit 2
  fi
  rm -f "$build_log"
fi
for f in vmlinuz initramfs.cpio.gz; do
  [ -s "$cache/$f" ] || die "no guest in $cache ($f missing) and no $build_guest to build one"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/guest-fio.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# shell_quote WORD: WORD as one word for the guest's busybox sh (single
# quotes unless it holds only characters that need none).
shell_quote() {
  case $1 in
    '' | *[!A-Za-z0-9_./,=:+@%-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

fio_cmd="fio --filename=/dev/vda --ioengine=libaio --direct=1 --group_reporting=1"
named=0
for a in "${fio_args[@]}"; do
  case $a in --name=* | --name) named=1 ;; esac
done
if [ -n "$job" ]; then
  named=1
  cp -- "$job" "$tmp/job.fio"
fi
[ "$named" -eq 1 ] || fio_cmd+=" --name=guest-fio"
for a in "${fio_args[@]}"; do fio_cmd+=" $(shell_quote "$a")"; done
[ -z "$job" ] || fio_cmd+=" /job.fio"

# /test.sh: run fio with its report in a file, then print the report between
# two marker lines with kernel messages silenced, so that nothing the
# kernel logs lands in the middle of it.
cat >"$tmp/test.sh" <<EOF
#!/bin/sh
[ -b /dev/vda ] || { echo "no /dev/vda in the guest" >/run/vublk-e2e-fail-reason; exit 1; }
$fio_cmd >/tmp/fio.out 2>&1
rc=\$?
echo 1 >/proc/sys/kernel/printk
echo GUEST-FIO-REPORT-BEGIN
cat /tmp/fio.out
echo GUEST-FIO-REPORT-END
[ \$rc -eq 0 ] || echo "fio exited with status \$rc" >/run/vublk-e2e-fail-reason
exit \$rc
EOF

# Linux unpacks concatenated initramfs archives, but an uncompressed cpio
# after a compressed one is found only at a 4-byte aligned offset; zeros
# between archives are skipped, so pad the first to 512 bytes.
base=$cache/initramfs.cpio.gz
base_size=$(stat -c %s "$base")
{
  cat "$base"
  head -c $(((512 - base_size % 512) % 512)) /dev/zero
  (cd "$tmp" && printf '%s\n' test.sh ${job:+job.fio} | cpio -o -H newc -R 0:0 --quiet)
} >"$tmp/initrd.img"

# ----------------------------------------------------------------- QEMU ---
attach_args=(--socket "$socket" --queues "$queues" --mem "$mem")
[ -z "$accel" ] || attach_args+=(--accel "$accel")
console=$tmp/console.log
say "booting the guest on $socket ($queues queue(s), $smp vCPU(s), $mem); fio: $fio_cmd"
boot=(timeout -s KILL "$timeout_secs" "$here/qemu-attach.sh" "${attach_args[@]}" --
  -smp "$smp" -nographic -no-reboot
  -kernel "$cache/vmlinuz" -initrd "$tmp/initrd.img" -append 'console=ttyS0 panic=-1 quiet')
set +e
if [ "$verbose" -eq 1 ]; then
  "${boot[@]}" </dev/null 2>&1 | tee "$console" >&2
  qemu_rc=${PIPESTATUS[0]}
else
  "${boot[@]}" </dev/null >"$console" 2>&1
  qemu_rc=$?
fi
set -e

# The serial console ends lines with CR LF.
tr -d '\r' <"$console" >"$console.txt"
sed -n '/^GUEST-FIO-REPORT-BEGIN$/,/^GUEST-FIO-REPORT-END$/{//!p}' "$console.txt"
result=$(sed -n 's/.*VUBLK-E2E-RESULT: //p' "$console.txt" | tail -n 1)
if [ "$result" = PASS ]; then
  exit 0
fi
[ "$verbose" -eq 1 ] || tail -n 30 "$console.txt" | sed 's/^/  | /' >&2
if [ -n "$result" ]; then
  say "the guest reported ${result#FAIL }"
elif [ "$qemu_rc" -eq 137 ]; then
  say "no result from the guest within ${timeout_secs} s (--timeout); QEMU was killed"
else
  say "the guest did not report a result (QEMU exited with status $qemu_rc)"
fi
exit 1
