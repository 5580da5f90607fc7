# docker-cilium: `sudo make run` and `sudo make test` set everything up.
SHELL := /bin/bash
VENV := .venv
PYTEST := $(VENV)/bin/pytest
AGENT_FLAGS ?=

.PHONY: install run test test-unit test-integration test-privileged test-e2e bench services clean-host demo demo-down

install:
	@scripts/install.sh

services: install
	@scripts/services.sh dockerd etcd

# Start the agent in the foreground with the embedded store.
run: install
	@scripts/services.sh dockerd
	exec $(VENV)/bin/cilium-agent --kvstore local $(AGENT_FLAGS)

# The whole suite: unit, integration (real etcd), privileged (real BPF and
# namespaces) and end-to-end (real dockerd). Nothing is skipped.
test: services
	@scripts/busybox-image.sh busybox:latest
	CILIUM_TEST_ETCD=127.0.0.1:2379 $(PYTEST) -p no:cacheprovider tests -ra --durations=25

test-unit: install
	$(PYTEST) -p no:cacheprovider tests/unit

test-integration: services
	CILIUM_TEST_ETCD=127.0.0.1:2379 $(PYTEST) -p no:cacheprovider tests/integration

test-privileged: install
	$(PYTEST) -p no:cacheprovider tests/privileged

test-e2e: services
	@scripts/busybox-image.sh busybox:latest
	$(PYTEST) -p no:cacheprovider tests/e2e

bench: services
	@scripts/busybox-image.sh busybox:latest
	$(VENV)/bin/python -m bench.run

# The handbook's walkthrough on this host (agent, cilium-net, app1..3, the l3
# policy and the allowed/denied matrix before and after it). Idempotent.
demo: install
	@scripts/demo.sh up

demo-down:
	@scripts/demo.sh down
# The agent image (Dockerfile) from a local Debian base (scripts/debian-image.sh);
# rebuilt only when its sources change. Used by compose/ and `make plugin`.
.PHONY: image plugin
image: install
	@scripts/agent-image.sh

# The agent as a managed Docker plugin named $(PLUGIN) (created disabled:
# `docker plugin set` its options, then `docker plugin enable $(PLUGIN)`).
PLUGIN ?= docker-cilium:latest
plugin: install
	@scripts/plugin.sh $(PLUGIN)

# Several simulated hosts on this machine, kind-style (scripts/cluster.sh):
# N nodes (containers with their own dockerd and agent from this checkout)
# and a 3-member etcd on one underlay network. Idempotent.
N ?= 3
.PHONY: cluster cluster-down
cluster: install
	@scripts/services.sh dockerd
	@scripts/busybox-image.sh busybox:latest
	@N=$(N) scripts/cluster.sh up

cluster-down:
	@scripts/cluster.sh down
