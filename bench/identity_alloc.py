"""Identity allocation rate: a real etcd against the embedded (SQLite) store.

Each sample allocates ``--labelsets`` label sets never seen before (a new
identity each: the whole claim path, lock, master key and node reference
in the store) through the agent's own ``IdentityAllocator``, at each
``--concurrency`` level (1 = one after the other; N = N allocations in
flight at once, as N containers starting together), then releases them
and runs the allocator's GC so the next sample starts from an empty space.
Stores and levels alternate round by round (etcd, embedded, etcd, ...) so
machine drift hits both alike; medians with min-max of identities/s.

etcd is a private single-member server (``tests/integration/etcd_proc``,
data under /tmp like the SQLite file) unless ``--etcd HOST:PORT`` names
one: the allocator's keys are fixed (``cilium/state/identities/...``), so a
shared etcd would mix these identities with an agent's. No agent, no root.

    python -m bench.identity_alloc [--labelsets 200] [--concurrency 1,10] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from bench.common import figure, ratios, spread
from docker_cilium import logging as dc_logging
from docker_cilium.identity.allocator import IdentityAllocator
from docker_cilium.identity.labels import Labels
from docker_cilium.kvstore import Backend
from docker_cilium.kvstore.etcd import EtcdBackend
from docker_cilium.kvstore.sqlite import SQLiteBackend

STORES = ("etcd", "embedded")


async def sample(allocator: IdentityAllocator, tag: str, count: int, concurrency: int) -> float:
    """Identities/s allocating ``count`` new label sets, ``concurrency`` at a time."""
    sets = [Labels.parse([f"container:bench-idalloc={tag}-{i}"]) for i in range(count)]
    gate = asyncio.Semaphore(concurrency)

    async def one(labels: Labels):
        async with gate:
            return await allocator.allocate(labels)

    t0 = time.perf_counter()
    got = await asyncio.gather(*(one(s) for s in sets))
    rate = count / (time.perf_counter() - t0)
    if len({i.id for i in got}) != count:
        raise SystemExit(f"{tag}: {count} label sets got {len({i.id for i in got})} distinct identities")
    for ident in got:
        await allocator.release(ident)
    await allocator.gc()
    return rate


async def measure(stores: dict[str, Backend], labelsets: int, levels: list[int], rounds: int) -> dict[str, Any]:
    allocators = {name: IdentityAllocator(b, f"bench-{name}-{os.getpid()}") for name, b in stores.items()}
    for b in stores.values():
        await b.connect()
    try:
        for a in allocators.values():
            await a.start()
        await asyncio.gather(*(sample(a, f"warm-{n}", 10, 1) for n, a in allocators.items()))
        rates: dict[int, dict[str, list[float]]] = {c: {n: [] for n in stores} for c in levels}
        for r in range(rounds):
            for c in levels:
                for name, a in allocators.items():
                    rates[c][name].append(await sample(a, f"{os.getpid()}-{r}-{c}-{name}", labelsets, c))
        return rates
    finally:
        for a in allocators.values():
            await a.close()
        for b in stores.values():
            await b.close()


def report(rates: dict[int, dict[str, list[float]]], labelsets: int, rounds: int) -> dict[str, Any]:
    def label(c: int) -> str:
        return "sequential" if c == 1 else f"{c} at once"

    med = {c: {n: statistics.median(v) for n, v in by.items()} for c, by in rates.items()}
    figures = []
    for c, by in rates.items():
        absolute = f"etcd {spread(by['etcd'], 'identities/s', 0)}, embedded {spread(by['embedded'], '', 0)}"
        figures.append(figure(f"identity allocation rate against etcd, {label(c)}", med[c]["etcd"],
                              "identities/s", rounds=by["etcd"], digits=0, absolute=absolute))
        figures.append(figure(f"identity allocation rate, etcd / embedded store, {label(c)}",
                              med[c]["etcd"] / med[c]["embedded"], "x", baseline="embedded store",
                              rounds=ratios(by["etcd"], by["embedded"]), absolute=absolute))
    levels = sorted(rates)
    return {
        "labelsets": labelsets, "rounds": rounds,
        "identities_per_s_median": {str(c): {n: round(v) for n, v in m.items()} for c, m in med.items()},
        "identities_per_s_all": {str(c): {n: [round(x) for x in v] for n, v in by.items()} for c, by in rates.items()},
        "figures": figures,
        "series": {"identity_alloc_rate": {
            "title": f"identity allocation rate ({labelsets} new label sets per sample)",
            "xlabel": "allocations in flight", "ylabel": "identities/s", "x": levels,
            "lines": {n: [round(med[c][n]) for c in levels] for n in STORES}}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labelsets", type=int, default=200, help="new label sets per sample")
    ap.add_argument("--concurrency", default="1,10", help="allocations in flight, comma-separated levels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--etcd", help="HOST:PORT of an etcd to use instead of a private one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    if args.labelsets < 1 or not levels or min(levels) < 1:
        ap.error("--labelsets and every --concurrency level must be >= 1")
    dc_logging.setup(fmt="text", quiet=True)  # stdout is the figures
    workdir = tempfile.mkdtemp(prefix="dcbench-idalloc-")
    cluster = None
    try:
        if args.etcd:
            address = args.etcd
        else:
            from tests.integration.etcd_proc import start_cluster
            cluster = start_cluster(1)
            address = cluster.members[0].address
        stores: dict[str, Backend] = {"etcd": EtcdBackend([address]),
                                      "embedded": SQLiteBackend(os.path.join(workdir, "kvstore.db"))}
        rates = asyncio.run(measure(stores, args.labelsets, levels, args.rounds))
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    res = report(rates, args.labelsets, args.rounds)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    for f in res["figures"]:
        print(f"{f['name']}: {f['value']} {f['unit']}" + (f"  [{f['absolute']}]" if f["absolute"] else ""),
              file=sys.stdout)


if __name__ == "__main__":
    main()
