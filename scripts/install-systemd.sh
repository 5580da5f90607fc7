#!/usr/bin/env bash
# Install and enable the agent's systemd unit (contrib/systemd/cilium.service)
# where systemd is the init system; elsewhere (containers, CI VMs whose PID 1
# is something else) do nothing. Enabled, not started: `systemctl start
# cilium`, the next boot, or starting docker.service (WantedBy) start it.
# Idempotent. Called by scripts/install.sh. The paths are variables so the
# tests can run it against a scratch directory and a recording systemctl.
set -euo pipefail
cd "$(dirname "$0")/.."
SYSTEMD_RUN_DIR=${SYSTEMD_RUN_DIR:-/run/systemd/system}  # exists iff systemd is PID 1 (sd_booted)
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
SYSTEMCTL=${SYSTEMCTL:-systemctl}

[ -d "$SYSTEMD_RUN_DIR" ] || exit 0
unit=$UNIT_DIR/cilium.service
if ! cmp -s contrib/systemd/cilium.service "$unit"; then
  install -m 0644 contrib/systemd/cilium.service "$unit"
  $SYSTEMCTL daemon-reload
fi
$SYSTEMCTL is-enabled --quiet cilium.service || $SYSTEMCTL enable --quiet cilium.service
echo "systemd unit installed and enabled: $unit (start it with 'systemctl start cilium')"
