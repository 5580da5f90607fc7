#!/usr/bin/env bash
# Inside a node of `make cluster` (scripts/cluster.sh): what a host's init
# system would do. Without arguments (the container's command, under
# docker-init): make the container's /sys, cgroups and /run usable (the node
# runs without --privileged, see docs/architecture.md), mount the node's own
# bpffs, start dockerd and the agent, then stay up while either is stopped,
# as a host does. `node-init.sh start|stop dockerd|agent` starts or stops
# one of them (e.g. to stop a node's agent and dockerd, then restart them).
#
# Environment (set by scripts/cluster.sh): CLUSTER_ETCD the etcd endpoints
# (host:port,...), AGENT_FLAGS extra cilium-agent flags.
set -euo pipefail
RUN=/run/docker-cilium-node
LOGS=/var/log

wait_for() {  # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# Each service is started from a subshell that exits at once, so it becomes a
# child of the container's init (docker-init), which reaps it when it stops.
start() {
  running "$1" && return 0
  mkdir -p "$RUN"
  case "$1" in
    dockerd)
      (setsid dockerd >>"$LOGS/dockerd.log" 2>&1 </dev/null & echo $! >"$RUN/dockerd.pid")
      wait_for 60 docker info || { tail -20 "$LOGS/dockerd.log" >&2; return 1; } ;;
    agent)
      # The endpoints go in Cilium's etcd config file (--kvstore-opt splits
      # its value at commas, so etcd.address holds only one endpoint).
      : "${CLUSTER_ETCD:?}"
      mkdir -p /etc/cilium
      printf 'endpoints:\n' >/etc/cilium/etcd.yaml
      printf -- '- http://%s\n' ${CLUSTER_ETCD//,/ } >>/etc/cilium/etcd.yaml
      # --bpf-lb-sock=false: with --cgroupns host the cgroup v2 root is the
      # real host's, so socket-LB hooks there would act on every process of
      # the machine, not only this node's.
      # shellcheck disable=SC2086
      (setsid cilium-agent --kvstore etcd --kvstore-opt etcd.config=/etc/cilium/etcd.yaml \
        --bpf-lb-sock=false ${AGENT_FLAGS:-} >>"$LOGS/cilium-agent.log" 2>&1 </dev/null &
       echo $! >"$RUN/agent.pid") ;;
    *) echo "unknown service $1 (dockerd, agent)" >&2; return 2 ;;
  esac
}

stop() {
  running "$1" || return 0
  local pid; pid=$(cat "$RUN/$1.pid")
  kill -TERM "$pid"
  wait_for 30 sh -c "! kill -0 $pid" || kill -KILL "$pid"
  rm -f "$RUN/$1.pid"
}

init() {
  # Docker mounts /sys and the cgroup v1 controllers read-only and /run
  # noexec; the inner dockerd needs them writable (and runc runs from /run).
  mount -o remount,rw /sys
  for d in /sys/fs/cgroup/*/; do
    [ -L "${d%/}" ] || mount -o remount,bind,rw "$d" 2>/dev/null || true
  done
  mount -o remount,exec /run
  # The node's own bpffs instance: its pins vanish with the container.
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
  start dockerd
  start agent
  exec sleep infinity
}

case "${1:-init}" in
  init) init ;;
  start|stop) "$1" "${2:?service: dockerd or agent}" ;;
  *) echo "usage: $0 [init | start|stop dockerd|agent]" >&2; exit 2 ;;
esac
