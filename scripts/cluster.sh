#!/usr/bin/env bash
# Several simulated hosts on this machine, built the way kind builds its nodes
# (`make cluster` / `make cluster-down`):
#
#   scripts/cluster.sh up          # N nodes (node1..nodeN) + a 3-member etcd
#   scripts/cluster.sh exec NODE CMD...   # e.g. exec node2 docker run --rm busybox true
#   scripts/cluster.sh status
#   scripts/cluster.sh down        # removes every container, network and volume it made
#
# A node is a container of local/cilium-node (scripts/cluster/node.Dockerfile)
# running its own dockerd and the agent from this checkout (mounted read-only
# at /opt/docker-cilium), with its own bpffs, on the user-defined network
# $CLUSTER (the underlay) at 10.213.0.(10+i). The agents use --kvstore etcd
# against etcd1..etcd3: three containers of compose/etcd's image on the same
# network (.2-.4), so a member can be stopped or paused on its own, whatever
# N is, and the host's etcd on 127.0.0.1:2379 stays out of it. Each node's
# dockerd gets this host's busybox:latest (docker save | docker load).
# `--privileged` fails on these machines; the node runs with the options of
# docs/architecture.md ("A cluster on one machine").
#
# Both up and down are idempotent: up keeps what already runs from the
# current images and checkout and starts or replaces the rest.
#
# Variables: N (3), CLUSTER (cilium-cluster: the name prefix and label),
# CLUSTER_SUBNET (10.213.0.0/24, a /24), AGENT_FLAGS (extra agent flags),
# NODE_IMAGE, ETCD_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
N=${N:-3}
CLUSTER=${CLUSTER:-cilium-cluster}
SUBNET=${CLUSTER_SUBNET:-10.213.0.0/24}
NODE_IMAGE=${NODE_IMAGE:-local/cilium-node:latest}
ETCD_IMAGE=${ETCD_IMAGE:-local/etcd:bookworm}
DOCKER=${DOCKER:-docker}
LABEL=docker-cilium.cluster=$CLUSTER
NET=${SUBNET%.*}   # 10.213.0
ETCD_MEMBERS=3
# The checkout's datapath objects, compiled here with the host's clang and
# mounted read-only in every node (whose image has no clang).
BPF_DIR=/var/tmp/docker-cilium-$CLUSTER/bpf

etcd_ip() { echo "$NET.$((1 + $1))"; }
node_ip() { echo "$NET.$((10 + $1))"; }
etcd_endpoints() {
  local i eps=()
  for i in $(seq 1 $ETCD_MEMBERS); do eps+=("$(etcd_ip "$i"):2379"); done
  (IFS=,; echo "${eps[*]}")
}

wait_for() {  # wait_for SECONDS WHAT CMD...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "cluster: timed out waiting for $what" >&2; return 1; }
    sleep 0.5
  done
}

images() {
  scripts/build-image.sh "$NODE_IMAGE" scripts/cluster/node.Dockerfile pyproject.toml setup.cfg
  scripts/build-image.sh "$ETCD_IMAGE" compose/etcd/Dockerfile
  PYTHONPATH=$REPO "$REPO/.venv/bin/python" -m docker_cilium.datapath.prebuild "$BPF_DIR" >/dev/null 2>&1 \
    || { echo "cluster: compiling the datapath failed: run 'sudo make install' first" >&2; exit 1; }
}

# current NAME IMAGE CONFIG: true when container NAME runs IMAGE with the
# configuration CONFIG (a label); otherwise removes it so it is made anew.
current() {
  local want have
  want="$($DOCKER image inspect -f '{{.Id}}' "$2") $3"
  have=$($DOCKER inspect -f '{{.Image}} {{index .Config.Labels "docker-cilium.cluster-config"}}' "$1" 2>/dev/null) || return 1
  if [ "$have" = "$want" ]; then
    [ "$($DOCKER inspect -f '{{.State.Running}}' "$1")" = true ] || $DOCKER start "$1" >/dev/null
    return 0
  fi
  $DOCKER rm -fv "$1" >/dev/null
  return 1
}

up_network() {
  local have
  if have=$($DOCKER network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$CLUSTER" 2>/dev/null); then
    [ "$have" = "$SUBNET" ] && return 0
    echo "cluster: network $CLUSTER exists with subnet $have, not $SUBNET: run '$0 down' first" >&2
    exit 1
  fi
  $DOCKER network create --driver bridge --subnet "$SUBNET" --label "$LABEL" "$CLUSTER" >/dev/null
}

up_etcd() {
  local i peers=() cfg
  for i in $(seq 1 $ETCD_MEMBERS); do peers+=("etcd$i=http://$(etcd_ip "$i"):2380"); done
  cfg=$(IFS=,; echo "${peers[*]}")
  for i in $(seq 1 $ETCD_MEMBERS); do
    current "$CLUSTER-etcd$i" "$ETCD_IMAGE" "$cfg" && continue
    $DOCKER run -d --name "$CLUSTER-etcd$i" --hostname "etcd$i" --label "$LABEL" \
      --label "docker-cilium.cluster-config=$cfg" --network "$CLUSTER" --ip "$(etcd_ip "$i")" \
      "$ETCD_IMAGE" --name "etcd$i" --data-dir /var/lib/etcd \
      --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://$(etcd_ip "$i"):2379" \
      --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://$(etcd_ip "$i"):2380" \
      --initial-cluster "$cfg" --initial-cluster-token "$CLUSTER" --initial-cluster-state new >/dev/null
  done
  wait_for 60 "etcd quorum" env ETCDCTL_API=3 etcdctl --endpoints "$(etcd_endpoints)" endpoint health
}

up_node() {
  local i=$1 name=$CLUSTER-node$1 cfg
  cfg="$REPO $(etcd_endpoints) ${AGENT_FLAGS:-}"
  current "$name" "$NODE_IMAGE" "$cfg" && return 0
  $DOCKER volume create --label "$LABEL" "$name-docker" >/dev/null
  # The options machines.md verified for a dockerd in a container, instead
  # of --privileged; /var/lib/docker a volume (overlay2 cannot nest in overlay2).
  # IPv6 on: Docker disables it in a container whose network has none, and
  # the agent's IPv6 routes (endpoints, the proxy's table) need it.
  $DOCKER run -d --init --name "$name" --hostname "node$i" --label "$LABEL" \
    --label "docker-cilium.cluster-config=$cfg" --network "$CLUSTER" --ip "$(node_ip "$i")" \
    --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
    --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
    --device-cgroup-rule 'a *:* rwm' --cgroupns host \
    --sysctl net.ipv6.conf.all.disable_ipv6=0 --sysctl net.ipv6.conf.default.disable_ipv6=0 \
    -v "$name-docker:/var/lib/docker" --tmpfs /run --tmpfs /tmp \
    -v "$REPO:/opt/docker-cilium:ro" -v "$BPF_DIR:/usr/lib/docker-cilium/bpf:ro" \
    -v /lib/modules:/lib/modules:ro \
    -e "CLUSTER_ETCD=$(etcd_endpoints)" -e "AGENT_FLAGS=${AGENT_FLAGS:-}" \
    "$NODE_IMAGE" >/dev/null
}

# The node's dockerd answers, has busybox:latest, and its agent reports OK.
ready_node() {
  local name=$CLUSTER-node$1
  wait_for 90 "node$1's dockerd" $DOCKER exec "$name" docker info
  if ! $DOCKER exec "$name" docker image inspect busybox:latest >/dev/null 2>&1; then
    $DOCKER exec -i "$name" docker load -q <"$BUSYBOX_TAR" >/dev/null
  fi
  wait_for 120 "node$1's agent (cilium status)" $DOCKER exec "$name" cilium status
}

up() {
  [[ $N =~ ^[1-9][0-9]*$ ]] && [ "$N" -le 200 ] || { echo "cluster: N must be 1..200, got $N" >&2; exit 2; }
  images
  up_network
  up_etcd
  local i
  for i in $(seq 1 "$N"); do up_node "$i"; done
  # Nodes beyond N from an earlier, larger cluster.
  for name in $($DOCKER ps -a --filter "label=$LABEL" --format '{{.Names}}'); do
    [[ $name =~ ^$CLUSTER-node([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -gt "$N" ] && remove_node "$name"
  done
  BUSYBOX_TAR=$(mktemp /tmp/cluster-busybox.XXXXXX.tar)
  trap 'rm -f "$BUSYBOX_TAR"' EXIT
  $DOCKER save busybox:latest -o "$BUSYBOX_TAR"
  local pids=()
  for i in $(seq 1 "$N"); do ready_node "$i" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  status
}

remove_node() {
  $DOCKER rm -fv "$1" >/dev/null
  $DOCKER volume rm "$1-docker" >/dev/null 2>&1 || true
}

down() {
  local ids
  ids=$($DOCKER ps -aq --filter "label=$LABEL")
  [ -z "$ids" ] || $DOCKER rm -fv $ids >/dev/null
  ids=$($DOCKER volume ls -q --filter "label=$LABEL")
  [ -z "$ids" ] || $DOCKER volume rm $ids >/dev/null
  ids=$($DOCKER network ls -q --filter "label=$LABEL")
  [ -z "$ids" ] || $DOCKER network rm $ids >/dev/null
  rm -rf "${BPF_DIR%/bpf}"
}

status() {
  local name node
  printf '%-8s %-12s %-9s %-16s %s\n' NODE ADDRESS STATE DOCKERD AGENT
  for name in $($DOCKER ps -a --filter "label=$LABEL" --format '{{.Names}}' | sort -V); do
    node=${name#"$CLUSTER-"}
    local ip state dockerd=- agent=-
    ip=$($DOCKER inspect -f "{{(index .NetworkSettings.Networks \"$CLUSTER\").IPAddress}}" "$name" 2>/dev/null || echo -)
    state=$($DOCKER inspect -f '{{.State.Status}}' "$name")
    if [[ $node == node* && $state == running ]]; then
      dockerd=$($DOCKER exec "$name" docker info -f '{{.ServerVersion}}' 2>/dev/null) || dockerd=down
      agent=$($DOCKER exec "$name" cilium status 2>/dev/null | sed -n 's/^KVStore: *//p' || true)
      agent=${agent:-down}
    fi
    printf '%-8s %-12s %-9s %-16s %s\n' "$node" "$ip" "$state" "$dockerd" "$agent"
  done
}

exec_node() {
  local node=${1:?usage: $0 exec NODE CMD...}; shift
  [ $# -gt 0 ] || { echo "usage: $0 exec NODE CMD..." >&2; exit 2; }
  if ! $DOCKER inspect -f '{{.Id}}' "$CLUSTER-$node" >/dev/null 2>&1 || [[ ! $node =~ ^(node|etcd)[0-9]+$ ]]; then
    echo "cluster: no node '$node' in cluster $CLUSTER ('$0 status' lists them)" >&2
    exit 2
  fi
  local tty=()
  [ -t 0 ] && [ -t 1 ] && tty=(-t)
  exec $DOCKER exec -i "${tty[@]}" "$CLUSTER-$node" "$@"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  exec) shift; exec_node "$@" ;;
  *) echo "usage: $0 up|down|status|exec NODE CMD..." >&2; exit 2 ;;
esac
