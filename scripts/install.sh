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

arch=$(dpkg --print-architecture)
PKGS=(docker.io clang llvm libbpf-dev bpftool iproute2 iptables etcd-server etcd-client
      busybox-static iperf3 docker-compose python3-bpfcc python3-venv kmod
      "linux-headers-cloud-${arch}")

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

# BCC compiles against /lib/modules/$(uname -r)/build. Kernels built outside
# Debian (like our VMs') ship no headers: point at the newest Debian ones;
# networking programs only use stable UAPI structs.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-"cloud-${arch}" 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$hdr" ]; then
    common=${hdr%-cloud-${arch}}-common
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    [ -d "$common" ] && ln -sfn "$common" "$kdir/source"
  fi
fi

# The project's venv (not --system-site-packages: Debian's old protobuf would
# shadow the one grpc needs); BCC's pure-Python bindings are linked in.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
  mkdir -p .venv/bcc-link
  ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bcc-link/bcc
  echo "$ROOT/.venv/bcc-link" > "$site/system-bcc.pth"
fi

for tool in cilium-agent cilium; do
  ln -sfn "$ROOT/.venv/bin/$tool" "/usr/local/bin/$tool"
done
echo "docker-cilium installed (venv: $ROOT/.venv, commands: /usr/local/bin/cilium-agent, /usr/local/bin/cilium)"
