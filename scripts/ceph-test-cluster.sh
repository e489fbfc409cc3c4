#!/bin/bash
# A throw-away single-node Ceph cluster for tests and benchmarks: one monitor
# and one BlueStore OSD on a sparse file, all on 127.0.0.1, every file under DIR.
#
#   scripts/ceph-test-cluster.sh start DIR   # prints DIR/ceph.conf when ready
#   scripts/ceph-test-cluster.sh stop DIR    # stops the daemons; DIR stays
#   scripts/ceph-test-cluster.sh osd-stop DIR | osd-start DIR
#
# start writes DIR/ceph.conf and DIR/keyring (client.admin; the conf names the
# keyring, so `--ceph-conf DIR/ceph.conf` alone is enough for vublk, rbd and
# qemu) and creates the pool `rbd` with size 1. No manager: nothing here needs
# one. The OSD keeps its data across osd-stop/osd-start (BlueStore, not
# memstore), so a test can stop it under a running guest.
#
# Run as root, it installs the Debian packages it needs first. Environment:
#   CEPH_TEST_MON_PORT   monitor port (default: a free port from 40000 up)
#   CEPH_TEST_OSD_BYTES  size of the OSD's sparse block file (default 8 GiB)

set -euo pipefail

die() {
  echo "ceph-test-cluster: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 start|stop|osd-stop|osd-start DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
dir=$2
[ -n "$dir" ] || usage

packages=(ceph-mon ceph-osd ceph-common)

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]} (run as root to install them)"
  echo "ceph-test-cluster: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } ||
    die "could not install ${missing[*]}"
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
  if [ -n "${CEPH_TEST_MON_PORT:-}" ]; then
    echo "$CEPH_TEST_MON_PORT"
    return
  fi
  local p
  for ((p = 40000 + RANDOM % 2000; p < 50000; p++)); do
    if port_free "$p"; then
      echo "$p"
      return
    fi
  done
  die "no free port for the monitor"
}

# ceph CLI against this cluster, bounded so a dead cluster fails instead of hanging.
cephc() {
  ceph --conf "$dir/ceph.conf" --connect-timeout 20 "$@"
}

pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {
  local what=$1 tries=$2
  shift 2
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not happen; logs are in $dir/log"
}

# The pool takes I/O: a probe object written and removed. (`ceph pg stat`
# would tell too, but it is a manager command, and without a manager it
# waits for one for ever.)
pool_writable() {
  timeout 10 rados --conf "$dir/ceph.conf" -p rbd put vublk-probe "$dir/ceph.conf" &&
    timeout 10 rados --conf "$dir/ceph.conf" -p rbd rm vublk-probe
}

start_osd() {
  pid_alive "$dir/run/osd.0.pid" && return 0
  ceph-osd --conf "$dir/ceph.conf" -i 0 2>>"$dir/log/osd.0.stderr"
  wait_for "osd.0 up" 120 bash -c "ceph --conf '$dir/ceph.conf' --connect-timeout 10 osd dump 2>/dev/null | grep -q '^osd.0 up'"
}

stop_daemon() {
  local pidfile=$1
  pid_alive "$pidfile" || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

start() {
  install_packages
  if pid_alive "$dir/run/mon.a.pid"; then
    start_osd
    echo "$dir/ceph.conf"
    return
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  rm -rf "$dir/mon" "$dir/osd" "$dir/run" "$dir/log"
  mkdir -p "$dir/mon/a" "$dir/osd/0" "$dir/run" "$dir/log"
  local port fsid osd_uuid
  port=$(pick_port)
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  cat >"$dir/ceph.conf" <<EOF
# Written by scripts/ceph-test-cluster.sh: a single-node test cluster.
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
public addr = 127.0.0.1
keyring = $dir/keyring
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
ms bind msgr2 = false
[mon]
mon data = $dir/mon/\$id
mon cluster log file = $dir/log/cluster.log
[osd]
osd data = $dir/osd/\$id
keyring = $dir/osd/\$id/keyring
osd objectstore = bluestore
bluestore block path = $dir/osd/\$id.block
bluestore block create = true
bluestore block size = ${CEPH_TEST_OSD_BYTES:-8589934592}
bluestore block db create = false
bluestore block wal create = false
osd memory target = 939524096
osd op num shards = 1
osd op num threads per shard = 2
EOF
  # One keyring for every identity: the monitor's, client.admin's (all caps).
  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$dir/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$port]" "$dir/run/monmap" >/dev/null
  ceph-mon --conf "$dir/ceph.conf" --mkfs -i a --monmap "$dir/run/monmap" --keyring "$dir/keyring" 2>"$dir/log/mkfs-mon.log" ||
    die "ceph-mon --mkfs failed: $(tail -3 "$dir/log/mkfs-mon.log")"
  ceph-mon --conf "$dir/ceph.conf" -i a 2>>"$dir/log/mon.a.stderr"
  wait_for "monitor quorum" 60 cephc mon stat

  local id
  id=$(cephc osd new "$osd_uuid")
  [ "$id" = 0 ] || die "expected osd id 0, got '$id'"
  ceph-osd --conf "$dir/ceph.conf" --no-mon-config -i 0 --mkfs --mkkey --osd-uuid "$osd_uuid" 2>"$dir/log/mkfs-osd.log" >/dev/null ||
    die "ceph-osd --mkfs failed: $(tail -3 "$dir/log/mkfs-osd.log")"
  cephc auth add osd.0 osd 'allow *' mon 'allow profile osd' -i "$dir/osd/0/keyring" >/dev/null 2>&1
  start_osd

  cephc osd pool create rbd 8 8 >/dev/null 2>&1
  cephc osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1
  cephc osd pool application enable rbd rbd >/dev/null 2>&1
  wait_for "pool rbd writable" 120 pool_writable
  echo "$dir/ceph.conf"
}

stop() {
  [ -d "$dir" ] || return 0
  stop_daemon "$dir/run/osd.0.pid"
  stop_daemon "$dir/run/mon.a.pid"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  osd-stop)
    stop_daemon "$dir/run/osd.0.pid"
    ;;
  osd-start)
    [ -f "$dir/ceph.conf" ] || die "no cluster in $dir (run start first)"
    start_osd
    ;;
  *) usage ;;
esac
