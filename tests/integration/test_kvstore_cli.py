"""`cilium kvstore get|set|delete` against real stores (SQLite file, real etcd),
as a separate process beside a client that watches like the agent does.

The watcher is the proof that a CLI write reaches the agent's watchers (the
identity allocator's is the same ``Backend.watch``): every set and delete of
the CLI must arrive there as an event, in order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import pytest

from docker_cilium.kvstore import Event, EventType

NO_AGENT = "/tmp/dc-no-agent-here/cilium.sock"  # flags only: no agent is asked


def cilium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docker_cilium.cli.main", "-H", NO_AGENT, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def store_flags(backend_kind, request, tmp_path) -> list[str]:
    if backend_kind == "etcd":
        return ["--kvstore", "etcd", "--kvstore-opt", f"etcd.address={request.getfixturevalue('etcd_server')}"]
    return ["--kvstore", "local", "--lib-dir", str(tmp_path)]  # backend_factory's kvstore.db


async def test_cli_writes_reach_a_watcher(backend_factory, store_flags):
    watcher = await backend_factory()  # creates the store (the agent would have)
    prefix = f"cilium/state/identities/v1/test-{uuid.uuid4().hex[:8]}/"
    await watcher.put(prefix + "existing", b'{"n": 1}')
    events = watcher.watch(prefix)

    async def cli(*args: str) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(cilium, "kvstore", *args, *store_flags)

    res = await cli("set", "--key", prefix + "k1", "--value", "container:id=app1")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert await asyncio.wait_for(events.__anext__(), 10) == Event(EventType.PUT, prefix + "k1",
                                                                   b"container:id=app1")
    assert await watcher.get(prefix + "k1") == b"container:id=app1"

    res = await cli("get", prefix + "k1")
    assert (res.returncode, res.stdout) == (0, f"{prefix}k1 => container:id=app1\n")
    res = await cli("get", "--recursive", prefix, "-o", "json")
    assert json.loads(res.stdout) == {prefix + "existing": '{"n": 1}', prefix + "k1": "container:id=app1"}
    res = await cli("get", "--recursive", prefix)
    assert res.stdout.splitlines() == [f'{prefix}existing => {{"n": 1}}', f"{prefix}k1 => container:id=app1"]

    res = await cli("delete", prefix + "k1")
    assert (res.returncode, res.stderr) == (0, "")
    assert await asyncio.wait_for(events.__anext__(), 10) == Event(EventType.DELETE, prefix + "k1", None)

    res = await cli("get", prefix + "k1")
    assert res.returncode == 1 and res.stderr.strip() == f"Error: key {prefix}k1 is not found"
    res = await cli("delete", prefix + "k1")
    assert res.returncode == 1 and res.stderr.strip() == f"Error: key {prefix}k1 is not found"

    res = await cli("delete", "--recursive", prefix)
    assert (res.returncode, res.stdout) == (0, f"Deleted 1 key(s) under {prefix}\n")
    assert await asyncio.wait_for(events.__anext__(), 10) == Event(EventType.DELETE, prefix + "existing", None)
    assert await watcher.get_prefix(prefix) == {}
    await events.aclose()


def test_local_store_is_never_created(tmp_path):
    """A wrong --lib-dir is an error, not a new empty store the agent never reads."""
    res = cilium("kvstore", "set", "--key", "a", "--value", "b", "--kvstore", "local", "--lib-dir", str(tmp_path))
    assert res.returncode == 1
    assert res.stderr.strip().startswith(f"Error: no embedded kvstore at {tmp_path}/kvstore.db")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--kvstore-opt", "etcd.address=127.0.0.1:1"], "Error: --kvstore-opt needs --kvstore"),
    (["--kvstore", "etcd", "--kvstore-opt", "etcd.adress=127.0.0.1:1"],
     "Error: unsupported --kvstore-opt etcd.adress for kvstore etcd"),
    (["--kvstore", "etcd", "--kvstore-opt", "etcd.address=127.0.0.1:1"],
     "Error: cannot reach any etcd endpoint: etcd 127.0.0.1:1: connect (lease grant) failed"),
])
def test_bad_store_options(args, message):
    res = cilium("kvstore", "get", "cilium", *args)
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr
    assert message in res.stderr, res.stderr
