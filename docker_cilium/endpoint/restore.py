"""Restore at agent start: networks and endpoints from the node store, each
record on its own, and what a crash left half-done.

A record that cannot be read or plumbed is logged and listed in
``restore_failures`` (``cilium status`` shows them) while the rest restores
and the agent starts: one bad record must not keep every later start from
succeeding. Endpoint records are written ``creating`` before the kernel sees
more than the veth (a veth without a record is the orphan sweep's) and
``disconnecting`` before a delete starts; a record still in one
of those states after a crash is an endpoint dockerd will never create or
delete again, so its remains are removed here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import structlog

from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.endpoint.network import Network
from docker_cilium.kvstore import keys

if TYPE_CHECKING:
    from docker_cilium.endpoint.manager import EndpointManager

log = structlog.get_logger(__name__)

# Recorded states of a create or delete still under way.
UNFINISHED_STATES = (State.CREATING.value, State.DISCONNECTING.value)


class RestoreMixin:
    """EndpointManager's start-up half (kept apart to keep each module small)."""

    async def restore(self: EndpointManager) -> tuple[int, int]:
        """Load networks and endpoints, each record on its own; re-plumb what
        the host still has. Half-done records wait for restore_datapath."""
        for key, raw in (await self.store.get_prefix(keys.NETWORKS)).items():
            try:
                net = Network.from_record(json.loads(raw))
            except Exception as exc:
                self._restore_failed(key, exc)
                continue
            # Kept even when plumbing fails: its endpoints and `docker network rm` need it.
            self.networks[net.id] = net
            try:
                await self._plumb_network(net)
            except Exception as exc:
                self._restore_failed(key, exc)
        for key, raw in (await self.store.get_prefix(keys.ENDPOINTS)).items():
            try:
                record = json.loads(raw)
                ep = Endpoint.from_record(record)  # in state RESTORING
            except Exception as exc:
                self._restore_failed(key, exc)
                continue
            if record.get("state") in UNFINISHED_STATES:
                self._unfinished.append(ep)
                continue
            try:
                idx = await self.links.link_index(ep.ifname)
                if idx is None:
                    # Host rebooted or someone deleted the link: dockerd will call
                    # DeleteEndpoint for it (or no longer knows it: then the
                    # reconciliation with dockerd deletes it); keep the record.
                    ep.set_state(State.NOT_READY, "interface is gone; waiting for Docker to remove the endpoint")
                else:
                    ep.ifindex = idx
                    await self._plumb_endpoint(ep)
            except Exception as exc:
                self._restore_failed(key, exc)
                ep.set_state(State.NOT_READY, f"restore failed: {exc}")
            self.endpoints[ep.docker_endpoint_id] = ep
        log.info("endpoint.restore", networks=len(self.networks), endpoints=len(self.endpoints),
                 unfinished=len(self._unfinished), failures=len(self.restore_failures))
        return len(self.networks), len(self.endpoints)

    def _restore_failed(self: EndpointManager, key: str, exc: Exception) -> None:
        log.error("endpoint.restore.record_failed", key=key, error=str(exc) or type(exc).__name__)
        self.restore_failures.append(f"{key}: {exc or type(exc).__name__}")

    async def restore_datapath(self: EndpointManager) -> None:
        """Hand restored endpoints to the datapath (after it has been loaded),
        and finish the creates and deletes a crash interrupted."""
        for ep in list(self.endpoints.values()):
            if ep.state != State.RESTORING:
                continue
            try:
                await self.hooks.endpoint_created(ep)
            except Exception as exc:
                # Its BPF state from before the restart stays in place and
                # enforcing; the next label event or regeneration retries.
                log.error("endpoint.restore_failed", endpoint=ep.id, error=str(exc))
                ep.set_state(State.NOT_READY, f"restore failed: {exc}")
            await self._save_endpoint(ep)
        live_addrs = {a for e in self.endpoints.values() for a in (e.ipv4, e.ipv6) if a}
        live_ids = {e.id for e in self.endpoints.values()}
        for ep in self._unfinished:
            # dockerd never got this endpoint (or already forgot it): nobody
            # would ever delete it. Its address or number may since belong to
            # a restored endpoint; then only its link and record go.
            shared = bool({ep.ipv4, ep.ipv6} & live_addrs) or ep.id in live_ids
            try:
                if shared:
                    await self.links.delete_endpoint_link(ep.docker_endpoint_id)
                    await self.store.delete(keys.ENDPOINTS + ep.docker_endpoint_id)
                else:
                    await self._teardown(ep)
                log.warning("endpoint.restore.unfinished_removed", endpoint=ep.id,
                            endpoint_id=ep.docker_endpoint_id[:12], ifname=ep.ifname)
            except Exception as exc:
                self._restore_failed(keys.ENDPOINTS + ep.docker_endpoint_id, exc)
        self._unfinished.clear()
