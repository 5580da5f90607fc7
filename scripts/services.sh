#!/usr/bin/env bash
# Start dockerd and etcd when they are not running (CI machines have no init
# system that does it). Idempotent; logs go to /var/log/docker-cilium-*.log.
set -euo pipefail

wait_for() {  # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

start_dockerd() {
  if /usr/bin/docker info >/dev/null 2>&1; then return 0; fi
  # A dockerd that is still starting or shutting down: wait, don't start a second.
  if pgrep -x dockerd >/dev/null; then
    wait_for 60 /usr/bin/docker info && return 0
    ! pgrep -x dockerd >/dev/null || { echo "dockerd runs but does not answer" >&2; return 1; }
  fi
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker || true
  fi
  if ! /usr/bin/docker info >/dev/null 2>&1; then
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
    setsid nohup dockerd >>/var/log/docker-cilium-dockerd.log 2>&1 < /dev/null &
  fi
  wait_for 60 /usr/bin/docker info || { echo "dockerd did not start; see /var/log/docker-cilium-dockerd.log" >&2; tail -20 /var/log/docker-cilium-dockerd.log >&2; return 1; }
  echo "dockerd is running"
}

start_etcd() {
  if ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 endpoint health >/dev/null 2>&1; then return 0; fi
  mkdir -p /var/lib/docker-cilium-etcd
  setsid nohup etcd --name docker-cilium --data-dir /var/lib/docker-cilium-etcd \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster docker-cilium=http://127.0.0.1:2380 \
    >>/var/log/docker-cilium-etcd.log 2>&1 < /dev/null &
  wait_for 30 env ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 endpoint health || { echo "etcd did not start" >&2; return 1; }
  echo "etcd is running on 127.0.0.1:2379"
}

for svc in "$@"; do
  case "$svc" in
    dockerd) start_dockerd ;;
    etcd) start_etcd ;;
    *) echo "unknown service $svc" >&2; exit 2 ;;
  esac
done
