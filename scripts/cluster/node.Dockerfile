# A simulated host of `make cluster` (scripts/cluster.sh), built the way kind
# builds its nodes: one container running its own dockerd and the agent.
#
# The image holds the agent's run-time needs (those of ../../Dockerfile's run
# stage) and its Python dependencies, not its code: scripts/cluster.sh mounts
# the checkout at /opt/docker-cilium, where the editable install below points,
# and the datapath objects it prebuilt from the checkout's bpf_src with the
# host's clang at /usr/lib/docker-cilium/bpf (no clang in the node), so a
# code change needs no rebuild. Inputs: this file, pyproject.toml, setup.cfg
# (README.md, which setup.cfg reads, is left empty here so doc edits don't
# rebuild the image).
ARG BASE=local/debian:bookworm
FROM ${BASE}
# docker.io: the node's own dockerd (brings containerd, runc); python3-venv
# libbpf1 iptables iproute2: as in the agent image; etcd-client: `etcdctl`
# against the cluster's etcd from any node; iperf3: bench/cluster.py (run from the
# node in an endpoint's netns with nsenter, so busybox containers suffice).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      docker.io python3 python3-venv libbpf1 iptables iproute2 etcd-client procps iperf3 >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
WORKDIR /opt/docker-cilium
# A stub package gives pip what `pip install -e .` needs (the dependencies and
# the cilium/cilium-agent entry points); the mounted checkout replaces it.
COPY pyproject.toml setup.cfg extra-ca.cr[t] ./
RUN mkdir docker_cilium && touch docker_cilium/__init__.py README.md \
 && if [ -f extra-ca.crt ]; then export PIP_CERT=$PWD/extra-ca.crt; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --no-cache-dir --disable-pip-version-check -e . \
 && rm -rf extra-ca.crt docker_cilium README.md && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
 && ln -s /opt/venv/bin/cilium-agent /opt/venv/bin/cilium /usr/local/bin/
ENV PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/opt/docker-cilium/scripts/cluster/node-init.sh"]
