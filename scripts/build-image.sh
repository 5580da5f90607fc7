#!/usr/bin/env bash
# Build a local image once: `scripts/build-image.sh IMAGE DOCKERFILE FILE...`.
# Idempotent: an image built from the same inputs is reused (its label
# docker-cilium.source carries the hash of DOCKERFILE and FILEs), so make
# targets and tests call it every time. The build context is DOCKERFILE (as
# ./Dockerfile) plus the FILEs at their repository paths, plus pip's CA bundle
# ($PIP_CERT or /etc/pip.conf's cert, as extra-ca.crt) when PyPI sits behind a
# TLS-inspecting proxy. The base image comes from scripts/debian-image.sh.
# Used by scripts/agent-image.sh (the agent) and scripts/cluster.sh (the
# kind-style node and its etcd). DOCKER_BUILD_FLAGS: extra `docker build`
# flags, e.g. --no-cache for a build from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 IMAGE DOCKERFILE [FILE...]" >&2; exit 2; }
IMAGE=$1 DOCKERFILE=$2; shift 2
FILES=("$@")
DOCKER=${DOCKER:-docker}
hash=$(find "$DOCKERFILE" "${FILES[@]}" -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
have() { $DOCKER image inspect -f '{{index .Config.Labels "docker-cilium.source"}}' "$IMAGE" 2>/dev/null || true; }
[ "$(have)" = "$hash" ] && exit 0
# One builder per image at a time: a second caller waits, then finds it built.
exec 9>"/tmp/docker-cilium-image-$(echo "$IMAGE" | tr -c 'a-zA-Z0-9\n' '_').lock"
flock 9
[ "$(have)" = "$hash" ] && exit 0
scripts/debian-image.sh
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
[ ${#FILES[@]} -eq 0 ] || tar -c --exclude=__pycache__ "${FILES[@]}" | tar -x -C "$ctx"
cp "$DOCKERFILE" "$ctx/Dockerfile"
cert=${PIP_CERT:-$(sed -n 's/^cert *= *//p' /etc/pip.conf 2>/dev/null | head -1)}
if [ -n "$cert" ] && [ -f "$cert" ]; then cp "$cert" "$ctx/extra-ca.crt"; fi
# --network host: the build's apt-get/pip reach the registries the host reaches.
# shellcheck disable=SC2086
$DOCKER build -q --network host ${DOCKER_BUILD_FLAGS:-} --label "docker-cilium.source=$hash" -t "$IMAGE" "$ctx" >/dev/null
echo "built $IMAGE ($hash)"
