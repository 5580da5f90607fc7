#!/usr/bin/env bash
# Build a local busybox image from Debian's busybox-static, so the tests need
# no registry (Docker Hub may be unreachable or rate-limited) and get an image
# with sh, ping, wget, nc and httpd.
# Idempotent: does nothing when the image already exists.
set -euo pipefail
IMAGE=${1:-busybox:latest}
DOCKER=${DOCKER:-docker}
if $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
BB=/bin/busybox
[ -x "$BB" ] || { echo "busybox-static is not installed ($BB missing)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,tmp,var/www,proc,sys,dev,root}
cp "$BB" "$root/bin/busybox"
for applet in $("$BB" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
echo '<html><body>docker-cilium</body></html>' > "$root/var/www/index.html"
tar -C "$root" -c . | $DOCKER import -c 'CMD ["sh"]' -c 'ENV PATH=/bin:/sbin' - "$IMAGE" >/dev/null
echo "built $IMAGE"
