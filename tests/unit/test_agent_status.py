"""Daemon.status's KV store line (the rest of the real status is checked on a
real agent: tests/e2e/test_etcd_agent.py, tests/e2e/test_cli_ops.py)."""

from __future__ import annotations

import asyncio

from docker_cilium.agent import daemon as daemon_mod
from docker_cilium.agent.config import DaemonConfig
from docker_cilium.agent.daemon import Daemon
from docker_cilium.kvstore import keys

ETCD = "192.0.2.1:2379"


class SilentStore:
    """A store whose reads never answer (etcd stopped with SIGSTOP, a partition)."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def get(self, key: str) -> bytes | None:
        assert key == keys.HEALTH
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return None


def _daemon(tmp_path) -> Daemon:
    return Daemon(DaemonConfig(kvstore="etcd", kvstore_opts={"etcd.address": ETCD},
                               lib_dir=str(tmp_path), state_dir=str(tmp_path)))


async def test_a_store_that_does_not_answer_is_a_failure_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(daemon_mod, "STATUS_KVSTORE_TIMEOUT_S", 0.05)
    d = _daemon(tmp_path)
    d.kvstore = store = SilentStore()  # type: ignore[assignment]
    # Unbounded, the read would wait for the store's own RPC timeout (10 s for etcd).
    st = await asyncio.wait_for(d._kvstore_status(), 5)
    assert st == {"state": "Failure", "msg": f"etcd {ETCD}: no answer within 0.05s"}
    assert store.cancelled == 1  # the read is abandoned, not left running


async def test_a_store_that_answers_is_ok(tmp_path):
    class Store:
        async def get(self, key: str) -> bytes | None:
            return None
    d = _daemon(tmp_path)
    d.kvstore = Store()  # type: ignore[assignment]
    assert await d._kvstore_status() == {"state": "Ok", "msg": f"etcd {ETCD}"}
