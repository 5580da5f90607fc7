# The cilium-agent image (also the managed plugin's rootfs, `make plugin`).
#
# Two stages: `build` has clang, compiles the BPF datapath once
# (docker_cilium.datapath.prebuild) and installs the Python packages into a
# venv; the run stage copies the venv, the sources and the compiled objects,
# and has no compiler. The agent compiles its datapath without per-node
# defines (node values live in maps), so the object built here is the one it
# would build itself; without clang it loads it from /usr/lib/docker-cilium/bpf
# after checking the sources' hash.
#
# Base: local/debian:bookworm from scripts/debian-image.sh (debootstrap +
# docker import, no registry). With Docker Hub: --build-arg BASE=debian:bookworm-slim.
ARG BASE=local/debian:bookworm

FROM ${BASE} AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv clang llvm libbpf-dev linux-libc-dev >/dev/null
WORKDIR /opt/docker-cilium
# extra-ca.crt: a CA bundle for PyPI behind a TLS-inspecting proxy, only when
# scripts/agent-image.sh finds one (PIP_CERT); it never reaches the run stage.
COPY pyproject.toml setup.cfg README.md extra-ca.cr[t] ./
COPY bpf_src bpf_src
COPY docker_cilium docker_cilium
RUN if [ -f extra-ca.crt ]; then export PIP_CERT=$PWD/extra-ca.crt; fi \
 && python3 -m venv .venv \
 && .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check -e . \
 && .venv/bin/python -m docker_cilium.datapath.prebuild /usr/lib/docker-cilium/bpf \
 && rm -f extra-ca.crt && find . -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE}
# libbpf1: the agent's bpf(2) calls (ctypes); iptables: CILIUM_* chains;
# iproute2: `ip`/`tc` for whoever debugs inside (cilium debuginfo lists them).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 libbpf1 iptables iproute2 >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /opt/docker-cilium /opt/docker-cilium
COPY --from=build /usr/lib/docker-cilium /usr/lib/docker-cilium
COPY scripts/container-entrypoint.sh /usr/local/bin/docker-cilium-entrypoint
RUN ln -s /opt/docker-cilium/.venv/bin/cilium-agent /opt/docker-cilium/.venv/bin/cilium /usr/local/bin/ \
 && cilium-agent --help >/dev/null && cilium version --help >/dev/null
ENV PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/usr/local/bin/docker-cilium-entrypoint"]
