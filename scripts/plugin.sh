#!/usr/bin/env bash
# `make plugin`: the agent as a managed (v2) Docker plugin. Builds the agent
# image (scripts/agent-image.sh), exports it as the plugin's rootfs beside
# plugin/config.json, and `docker plugin create`s NAME (replacing a disabled
# plugin of that name). Then, as root:
#   docker plugin set NAME CILIUM_KVSTORE=etcd CILIUM_KVSTORE_OPT=etcd.address=127.0.0.1:2379   # optional
#   docker plugin enable NAME
#   docker network create --ipv6 --subnet ::1/112 -d NAME --ipam-driver NAME cilium-net
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-docker-cilium:latest}
IMAGE=${IMAGE:-local/cilium-agent:latest}
DOCKER=${DOCKER:-docker}
scripts/agent-image.sh "$IMAGE"
# The host directories the plugin's mounts need (their sources are settable).
mkdir -p /var/run/cilium /var/lib/cilium
build=$(mktemp -d /var/tmp/docker-cilium-plugin.XXXXXX)
cid=""
trap 'rm -rf "$build"; [ -z "$cid" ] || $DOCKER rm -f "$cid" >/dev/null' EXIT
mkdir "$build/rootfs"
cp plugin/config.json "$build/"
cid=$($DOCKER create "$IMAGE")
$DOCKER export "$cid" | tar -x -C "$build/rootfs"
if $DOCKER plugin inspect "$NAME" >/dev/null 2>&1; then
  $DOCKER plugin rm "$NAME" >/dev/null   # refuses while enabled: disable it first
fi
$DOCKER plugin create "$NAME" "$build" >/dev/null
echo "created plugin $NAME (disabled): docker plugin enable $NAME"
