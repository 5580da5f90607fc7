#!/usr/bin/env bash
# Build the local Debian base image the agent's Dockerfile starts FROM, without
# a registry: debootstrap --variant=minbase into a folder, then `docker import`.
# Idempotent: does nothing when the image exists (the tests and `make image`
# call it every time; only the first call pays the ~30 s debootstrap).
# A host that reaches Docker Hub can skip it: `docker pull debian:bookworm &&
# docker tag debian:bookworm local/debian:bookworm`.
set -euo pipefail
IMAGE=${1:-local/debian:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}
if $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed: run 'sudo make install'" >&2; exit 1; }
# One builder at a time: a second caller waits, then finds the image.
exec 9>/tmp/docker-cilium-debian-image.lock
flock 9
if $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
root=$(mktemp -d /var/tmp/debian-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/dev/null
# Debian's docker images ship these two: no daemon restarts from dpkg, no docs.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
  > "$root/etc/dpkg/dpkg.cfg.d/docker-minimal"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | $DOCKER import -c 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "built $IMAGE"
