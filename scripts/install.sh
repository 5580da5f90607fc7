#!/usr/bin/env bash
# Install everything docker-cilium needs on a Debian/Ubuntu host. Idempotent:
# a second run installs nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "$(id -u)" != 0 ]; then
  echo "install needs root: run 'sudo make install'" >&2
  exit 1
fi

# bpf_src/ compiles with clang against libbpf-dev's <bpf/*.h> and the UAPI
# headers of linux-libc-dev (<linux/bpf.h>, ...): no kernel build headers.
PKGS=(docker.io clang llvm libbpf-dev linux-libc-dev bpftool iproute2 iptables etcd-server
      etcd-client busybox-static iperf3 wrk docker-compose python3-venv kmod debootstrap)
# systemd-analyze checks the agent's unit; ruby checks the Vagrantfile's syntax.
PKGS+=(systemd ruby)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project's venv (not --system-site-packages: Debian's old protobuf would
# shadow the one grpc needs).
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

for tool in cilium-agent cilium; do
  ln -sfn "$ROOT/.venv/bin/$tool" "/usr/local/bin/$tool"
done

# Where systemd runs: the agent as a service ordered before docker.service.
scripts/install-systemd.sh
echo "docker-cilium installed (venv: $ROOT/.venv, commands: /usr/local/bin/cilium-agent, /usr/local/bin/cilium)"
