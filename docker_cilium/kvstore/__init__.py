"""Key-value store backends and the factory the agent uses to pick one.

``local`` (SQLite, no server) is the default so a single Docker host works
out of the box; ``etcd`` is for several hosts sharing identities, like
Cilium's ``--kvstore etcd --kvstore-opt etcd.address=...``.
"""

from __future__ import annotations

import os

from .backend import Backend, Event, EventType, KVStoreError

from .etcd_config import EtcdConfigError, load_etcd_config

__all__ = ["Backend", "Event", "EventType", "KVStoreError", "EtcdConfigError", "new_backend", "parse_options"]

KINDS = ("local", "etcd")
LOCAL_OPTS = ("lease.ttl",)


def parse_options(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--kvstore-opt`` values (each ``k=v[,k=v...]``) as one dict; ValueError names a bad one.

    One parser for the agent and ``cilium kvstore``, so both read the same
    flags the same way. A comma-separated piece without ``=`` continues the value before it, so
    ``etcd.address=10.0.0.2:2379,10.0.0.3:2379`` names two members.
    """
    out: dict[str, str] = {}
    for item in values:
        key = None
        for part in item.split(","):
            if not part:
                continue
            name, sep, val = part.partition("=")
            if sep:
                key = name.strip()
                out[key] = val.strip()
            elif key is not None:
                out[key] = f"{out[key]},{part.strip()}"
            else:
                raise ValueError(f"{part!r}: expected key=value")
    return out


def new_backend(kind: str, options: dict[str, str], lib_dir: str) -> Backend:
    """Build (not connect) the backend named by ``kind``.

    ``options`` are the agent's ``--kvstore-opt`` pairs; ``lib_dir`` is the
    agent state directory where the local store lives.  Optional
    ``lease.ttl`` (seconds) overrides the session lease TTL for both kinds.
    An option the kind does not know is refused (EtcdConfigError, a
    ValueError), never ignored: a misspelt TLS option must not mean plaintext.
    """
    ttl_opt = options.get("lease.ttl")
    if kind == "local":
        from .sqlite import SQLiteBackend

        unknown = sorted(set(options) - set(LOCAL_OPTS))
        if unknown:
            raise EtcdConfigError(
                f"unsupported --kvstore-opt {', '.join(unknown)} for kvstore local (supported: {', '.join(LOCAL_OPTS)})"
            )
        path = os.path.join(lib_dir, "kvstore.db")
        return SQLiteBackend(path, lease_ttl=float(ttl_opt)) if ttl_opt else SQLiteBackend(path)
    if kind == "etcd":
        from .etcd import EtcdBackend

        config = load_etcd_config(options)
        ttl = int(float(ttl_opt)) if ttl_opt else 15
        return EtcdBackend(config.endpoints, lease_ttl=ttl, config=config)
    raise ValueError(f"unknown kvstore kind {kind!r}: expected one of {', '.join(KINDS)}")
