"""Key-value store backends and the factory the agent uses to pick one.

``local`` (SQLite, no server) is the default so a single Docker host works
out of the box; ``etcd`` is for several hosts sharing identities, like
Cilium's ``--kvstore etcd --kvstore-opt etcd.address=...``.
"""

from __future__ import annotations

import os

from .backend import Backend, Event, EventType, KVStoreError

__all__ = ["Backend", "Event", "EventType", "KVStoreError", "new_backend", "parse_etcd_endpoints"]

KINDS = ("local", "etcd")


def parse_etcd_endpoints(address: str) -> list[str]:
    """Turn ``"http://a:2379, b:2379"`` into ``["a:2379", "b:2379"]``.

    Cilium's etcd.address takes URLs; aetcd wants bare host:port.
    """
    eps = []
    for part in address.split(","):
        part = part.strip()
        for scheme in ("http://", "https://"):
            if part.startswith(scheme):
                part = part[len(scheme):]
        part = part.rstrip("/")
        if part:
            eps.append(part)
    return eps


def new_backend(kind: str, options: dict[str, str], lib_dir: str) -> Backend:
    """Build (not connect) the backend named by ``kind``.

    ``options`` are the agent's ``--kvstore-opt`` pairs; ``lib_dir`` is the
    agent state directory where the local store lives.  Optional
    ``lease.ttl`` (seconds) overrides the session lease TTL for both kinds.
    """
    ttl_opt = options.get("lease.ttl")
    if kind == "local":
        from .sqlite import SQLiteBackend

        path = os.path.join(lib_dir, "kvstore.db")
        return SQLiteBackend(path, lease_ttl=float(ttl_opt)) if ttl_opt else SQLiteBackend(path)
    if kind == "etcd":
        from .etcd import EtcdBackend

        address = options.get("etcd.address", "")
        endpoints = parse_etcd_endpoints(address)
        if not endpoints:
            raise ValueError(
                "kvstore 'etcd' needs the option etcd.address=HOST:PORT[,HOST:PORT...] "
                "(e.g. --kvstore-opt etcd.address=127.0.0.1:2379)"
            )
        return EtcdBackend(endpoints, lease_ttl=int(float(ttl_opt))) if ttl_opt else EtcdBackend(endpoints)
    raise ValueError(f"unknown kvstore kind {kind!r}: expected one of {', '.join(KINDS)}")
