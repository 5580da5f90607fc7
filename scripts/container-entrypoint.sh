#!/bin/sh
# Entry point of the agent image (compose service and managed plugin): the
# agent writes the host's sysctls (forwarding, proxy_arp) under /proc/sys,
# which Docker mounts read-only in a container that is not `privileged`
# (Compose has no `systempaths=unconfined`; a plugin has no option for it).
# With CAP_SYS_ADMIN the read-only bind mount is made writable again.
set -e
if [ ! -w /proc/sys/net/ipv4/ip_forward ]; then
  mount -o remount,bind,rw /proc/sys 2>/dev/null || mount -o remount,rw /proc/sys
fi
exec /usr/local/bin/cilium-agent "$@"
