#!/usr/bin/env bash
# The handbook's Docker walkthrough on this host: `make demo` / `make demo-down`.
#
#   scripts/demo.sh up     agent (embedded store) if none answers, cilium-net,
#                          app1 (HTTP, id=app1), app2 and app3 clients; prints
#                          app1's `docker inspect` IDs and addresses and the
#                          allowed/denied matrix before and after the l3 policy
#   scripts/demo.sh down   removes the demo's containers, network and policy,
#                          and stops (and cleans up after) an agent the demo started
#
# Idempotent: `up` twice rebuilds the same state; `down` with nothing there is fine.
# Environment (defaults in brackets):
#   DEMO_IMAGE [busybox:latest]  image for all three apps; built locally from
#                Debian's busybox-static when missing, or pulled with DEMO_PULL=1
#   DEMO_NET [cilium-net]        DEMO_POLICY [tests/fixtures/policies/l3-rule.json]
#   DEMO_AGENT_FLAGS [--kvstore local]  flags of an agent the demo starts
#   DEMO_RUN_DIR [/var/run/cilium]      where that agent's pid file lives
#   DEMO_AGENT_LOG [/var/log/docker-cilium-agent.log]
#   CILIUM_HOST                  the agent API socket (as for the `cilium` CLI)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DOCKER=${DOCKER:-docker}
CILIUM=${CILIUM:-$ROOT/.venv/bin/cilium}
CILIUM_AGENT=${CILIUM_AGENT:-$ROOT/.venv/bin/cilium-agent}
PY=${PY:-$ROOT/.venv/bin/python}
DEMO_IMAGE=${DEMO_IMAGE:-busybox:latest}
DEMO_NET=${DEMO_NET:-cilium-net}
DEMO_POLICY=${DEMO_POLICY:-$ROOT/tests/fixtures/policies/l3-rule.json}
DEMO_AGENT_FLAGS=${DEMO_AGENT_FLAGS:---kvstore local}
DEMO_RUN_DIR=${DEMO_RUN_DIR:-/var/run/cilium}
DEMO_AGENT_LOG=${DEMO_AGENT_LOG:-/var/log/docker-cilium-agent.log}
PIDFILE=$DEMO_RUN_DIR/demo-agent.pid
LABEL=docker-cilium-demo=1
APPS=(app1 app2 app3)
# app1 writes its own page so any busybox image (local or a registry's) serves it.
APP1_CMD='mkdir -p /var/www && echo "hello from app1" > /var/www/index.html && exec httpd -f -p 80 -h /var/www'

say() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }  # print a command as the handbook would, then run it
showq() { printf '$ %s\n' "$*"; "$@" >/dev/null; }  # the same, without the command's output
die() { echo "demo: $*" >&2; exit 1; }

agent_answers() { "$CILIUM" status -o json 2>/dev/null | grep -q '^{'; }

wait_for() {  # wait_for SECONDS WHAT CMD...
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt "$deadline" ] || die "timed out after $seconds s waiting for $what"
    sleep 0.3
  done
}

ensure_image() {
  if $DOCKER image inspect "$DEMO_IMAGE" >/dev/null 2>&1; then return 0; fi
  if [ -n "${DEMO_PULL:-}" ]; then
    show $DOCKER pull "$DEMO_IMAGE"
  else
    DOCKER=$DOCKER scripts/busybox-image.sh "$DEMO_IMAGE"
  fi
}

ensure_agent() {
  if agent_answers; then echo "cilium-agent is running"; return 0; fi
  if [ -d /run/systemd/system ] && systemctl cat cilium.service >/dev/null 2>&1; then
    show systemctl start cilium.service
  else
    mkdir -p "$DEMO_RUN_DIR" "$(dirname "$DEMO_AGENT_LOG")"
    # shellcheck disable=SC2086  # DEMO_AGENT_FLAGS is a list of flags
    setsid nohup "$CILIUM_AGENT" $DEMO_AGENT_FLAGS >>"$DEMO_AGENT_LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    echo "started cilium-agent $DEMO_AGENT_FLAGS (pid $!, log $DEMO_AGENT_LOG)"
  fi
  local deadline=$((SECONDS + 60))
  until agent_answers; do
    if [ -e "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      rm -f "$PIDFILE"; tail -20 "$DEMO_AGENT_LOG" >&2; die "cilium-agent exited (log: $DEMO_AGENT_LOG)"
    fi
    [ $SECONDS -lt $deadline ] || die "cilium-agent does not answer after 60 s (log: $DEMO_AGENT_LOG)"
    sleep 0.3
  done
}

remove_apps() {  # only the demo's own containers; someone else's app1 stops the demo
  local name
  for name in "${APPS[@]}"; do
    $DOCKER container inspect "$name" >/dev/null 2>&1 || continue
    [ "$($DOCKER inspect -f '{{index .Config.Labels "docker-cilium-demo"}}' "$name")" = 1 ] \
      || die "a container named $name exists and is not the demo's: remove or rename it first"
    $DOCKER rm -f "$name" >/dev/null
  done
}

ensure_network() {
  if $DOCKER network inspect "$DEMO_NET" >/dev/null 2>&1; then
    [ "$($DOCKER network inspect -f '{{.Driver}}' "$DEMO_NET")" = cilium ] \
      || die "network $DEMO_NET exists with another driver: remove it first"
    echo "network $DEMO_NET exists"
    return 0
  fi
  showq $DOCKER network create --ipv6 --subnet ::1/112 --driver cilium --ipam-driver cilium \
    --label "$LABEL" "$DEMO_NET"
}

endpoints_ready() {  # every app has an endpoint in state ready with a non-reserved identity
  "$CILIUM" endpoint list -o json | "$PY" -c '
import json, sys
want = set(sys.argv[1:])
ready = {e["container-name"] for e in json.load(sys.stdin)
         if e.get("state") == "ready" and (e.get("identity") or {}).get("id", 0) >= 256}
sys.exit(0 if want <= ready else 1)' "${APPS[@]}"
}

reaches() {  # reaches FROM IP: HTTP GET from a container, 3 s budget
  $DOCKER exec "$1" timeout 3 wget -q -O - "http://$2/" 2>/dev/null | grep -q "hello from app1"
}

matrix() {  # matrix TITLE IP
  say "$1"
  local from
  for from in app2 app3; do
    if reaches "$from" "$2"; then echo "$from -> app1 : allowed"; else echo "$from -> app1 : denied"; fi
  done
}

up() {
  say "dockerd and the agent"
  scripts/services.sh dockerd
  ensure_image
  ensure_agent
  agent_answers || die "the agent stopped answering"
  "$CILIUM" policy delete name=l3-rule >/dev/null 2>&1 || true  # a previous run's rule
  remove_apps

  say "network and labelled containers"
  ensure_network
  showq $DOCKER run -d --name app1 --net "$DEMO_NET" -l id=app1 -l "$LABEL" "$DEMO_IMAGE" sh -c "$APP1_CMD"
  showq $DOCKER run -d --name app2 --net "$DEMO_NET" -l id=app2 -l "$LABEL" "$DEMO_IMAGE" sleep 1d
  showq $DOCKER run -d --name app3 --net "$DEMO_NET" -l id=app3 -l "$LABEL" "$DEMO_IMAGE" sleep 1d
  wait_for 60 "endpoints with identities" endpoints_ready

  say "docker inspect app1"
  $DOCKER inspect -f "{{with index .NetworkSettings.Networks \"$DEMO_NET\"}}NetworkID:  {{.NetworkID}}
EndpointID: {{.EndpointID}}
IPAddress:  {{.IPAddress}}
IPv6:       {{.GlobalIPv6Address}}{{end}}" app1
  local ip
  ip=$($DOCKER inspect -f "{{(index .NetworkSettings.Networks \"$DEMO_NET\").IPAddress}}" app1)
  # httpd is up once app1 answers itself
  wait_for 20 "app1's HTTP server" $DOCKER exec app1 timeout 2 wget -q -O /dev/null "http://$ip/"
  show "$CILIUM" endpoint list

  matrix "before the policy (no rule selects app1: everyone is allowed)" "$ip"

  say "import the l3 policy: only id=app2 reaches id=app1, on TCP port 80"
  cat "$DEMO_POLICY"
  local rev
  rev=$("$CILIUM" policy import "$DEMO_POLICY" | awk '/Revision:/ {print $2}')
  echo "Revision: $rev"
  "$CILIUM" policy wait "$rev" >/dev/null

  # The datapath's drop events while app3 tries (unbuffered: `timeout` ends the monitor).
  local mon monpid
  mon=$(mktemp)
  PYTHONUNBUFFERED=1 timeout 5 "$CILIUM" monitor --type drop >"$mon" 2>/dev/null &
  monpid=$!
  sleep 0.5
  matrix "after the policy" "$ip"
  wait "$monpid" || true
  say "cilium monitor --type drop, while app3 tried"
  grep -m 3 ' drop ' "$mon" || echo "(no drop event seen)"
  rm -f "$mon"

  say "next"
  echo "cilium monitor --type drop     # watch drops live"
  echo "make demo-down                 # remove the demo"
}

down() {
  if agent_answers; then
    "$CILIUM" policy delete name=l3-rule >/dev/null 2>&1 || true
  fi
  local ids
  ids=$($DOCKER ps -aq --filter "label=$LABEL" 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$ids" ] || $DOCKER rm -f $ids >/dev/null
  if $DOCKER network inspect "$DEMO_NET" >/dev/null 2>&1 \
      && [ "$($DOCKER network inspect -f '{{index .Labels "docker-cilium-demo"}}' "$DEMO_NET")" = 1 ]; then
    $DOCKER network rm "$DEMO_NET" >/dev/null
  fi
  if [ -e "$PIDFILE" ]; then
    local pid
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait_for 20 "cilium-agent (pid $pid) to stop" bash -c "! kill -0 $pid"
    fi
    rm -f "$PIDFILE"
    # The agent's datapath (cilium_host, BPF pins, iptables chains): same dirs as it ran with.
    local args=() flags prev=""
    read -r -a flags <<<"$DEMO_AGENT_FLAGS"
    for f in "${flags[@]}"; do
      case "$prev" in --lib-dir|--state-dir|--bpf-root|--plugin-socket) args+=("$prev" "$f") ;; esac
      prev=$f
    done
    "$CILIUM" cleanup -f "${args[@]}" >/dev/null
    for ((i = 0; i < ${#args[@]}; i += 2)); do  # a private --bpf-root dir is the demo's too
      [ "${args[i]}" != --bpf-root ] || [ "${args[i+1]}" = /sys/fs/bpf ] || rmdir "${args[i+1]}" 2>/dev/null || true
    done
    echo "stopped the demo's cilium-agent and removed its datapath"
  fi
  echo "demo removed"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
