#!/usr/bin/env bash
# Build the agent image (Dockerfile) once: `scripts/agent-image.sh [IMAGE]`.
# Idempotent: an image built from the same sources is reused (its label
# carries their hash), so tests and make targets call it every time; see
# scripts/build-image.sh (base image, build context, pip's CA bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/build-image.sh "${1:-local/cilium-agent:latest}" Dockerfile \
  pyproject.toml setup.cfg README.md bpf_src docker_cilium scripts/container-entrypoint.sh
