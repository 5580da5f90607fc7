"""Two agent processes, one etcd: the same labels get the same identity, different
labels never share one, even when both allocate at the same moment.

Each "agent" is a separate OS process with its own etcd client, session lease
and node name, exactly the parts of cilium-agent that allocate identities.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.etcd

AGENT = textwrap.dedent("""
    import asyncio, json, random, sys, time
    from docker_cilium.identity.allocator import IdentityAllocator
    from docker_cilium.identity.labels import Labels
    from docker_cilium.kvstore.etcd import EtcdBackend

    async def main(address, node, start_at, sets):
        backend = EtcdBackend([address])
        await backend.connect()
        alloc = IdentityAllocator(backend, node)
        await alloc.start()
        random.seed(node)
        order = list(sets)
        random.shuffle(order)
        while time.time() < start_at:       # both processes start allocating together
            await asyncio.sleep(0.001)
        got = await asyncio.gather(*(alloc.allocate(Labels.parse(s.split(","))) for s in order))
        print(json.dumps({s: i.id for s, i in zip(order, got)}))
        await alloc.close()
        await backend.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]))
""")


def test_two_agent_processes_agree(etcd_server):
    import time

    label_sets = [f"container:app=svc{i},container:tier={'fe' if i % 2 else 'be'}" for i in range(12)]
    label_sets.append("container:app=svc1")  # a label-set that is a prefix of another's key
    start_at = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", AGENT, etcd_server, node, str(start_at), *label_sets],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in ("node1", "node2")]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    a, b = results
    assert a == b, "the same labels must get the same identity on every node"
    assert len(set(a.values())) == len(label_sets), "different labels must never share an identity"
    assert all(256 <= v <= 65535 for v in a.values())
