#!/usr/bin/env bash
# Build the agent image (Dockerfile) once: `scripts/agent-image.sh [IMAGE]`.
# Idempotent: an image built from the same sources is reused (its label
# carries their hash), so tests and make targets call it every time.
# The base image comes from scripts/debian-image.sh; the build context is
# only what the Dockerfile copies, plus pip's CA bundle ($PIP_CERT or
# /etc/pip.conf's cert, as extra-ca.crt) when PyPI sits behind a
# TLS-inspecting proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-local/cilium-agent:latest}
DOCKER=${DOCKER:-docker}
FILES=(Dockerfile pyproject.toml setup.cfg README.md bpf_src docker_cilium scripts/container-entrypoint.sh)
hash=$(find "${FILES[@]}" -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
have=$($DOCKER image inspect -f '{{index .Config.Labels "docker-cilium.source"}}' "$IMAGE" 2>/dev/null || true)
[ "$have" = "$hash" ] && exit 0
exec 9>/tmp/docker-cilium-agent-image.lock
flock 9
have=$($DOCKER image inspect -f '{{index .Config.Labels "docker-cilium.source"}}' "$IMAGE" 2>/dev/null || true)
[ "$have" = "$hash" ] && exit 0
scripts/debian-image.sh
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
tar -c --exclude=__pycache__ "${FILES[@]}" | tar -x -C "$ctx"
cert=${PIP_CERT:-$(sed -n 's/^cert *= *//p' /etc/pip.conf 2>/dev/null | head -1)}
if [ -n "$cert" ] && [ -f "$cert" ]; then cp "$cert" "$ctx/extra-ca.crt"; fi
# --network host: the build's apt-get/pip reach the registries the host reaches.
$DOCKER build -q --network host --label "docker-cilium.source=$hash" -t "$IMAGE" "$ctx" >/dev/null
echo "built $IMAGE ($hash)"
