"""Reserved security identities (numbers fixed cluster-wide, never in the kvstore).

They are the same on every node without coordination, which is why the
datapath and policy engine can hard-code them (e.g. ``world`` = 2 for
traffic from outside the cluster).  Allocated identities start at
``MIN_ALLOCATED`` so they can never collide with these.
"""

from __future__ import annotations

from .labels import SOURCE_RESERVED, Label, Labels

HOST = 1
WORLD = 2
UNMANAGED = 3
HEALTH = 4
INIT = 5
REMOTE_NODE = 6  # another node of the cluster (its host, through the tunnel or the underlay)

MIN_ALLOCATED = 256
MAX = 65535
# Node-local identities (CIDR) have this bit set, as Cilium's IdentityScopeLocal;
# the datapath tests it (IDENTITY_LOCAL_SCOPE_FLAG in bpf_src/lib/policy.h).
LOCAL_SCOPE = 1 << 24

_NAMES: dict[int, str] = {
    HOST: "host",
    WORLD: "world",
    UNMANAGED: "unmanaged",
    HEALTH: "health",
    INIT: "init",
    REMOTE_NODE: "remote-node",
}
_BY_NAME: dict[str, int] = {name: num for num, name in _NAMES.items()}

#: The ``reserved:<name>`` label strings policy code matches on.
HOST_LABEL = f"{SOURCE_RESERVED}:{_NAMES[HOST]}"
WORLD_LABEL = f"{SOURCE_RESERVED}:{_NAMES[WORLD]}"
INIT_LABEL = f"{SOURCE_RESERVED}:{_NAMES[INIT]}"
REMOTE_NODE_LABEL = f"{SOURCE_RESERVED}:{_NAMES[REMOTE_NODE]}"


def labels_for(number: int) -> Labels | None:
    """``reserved:<name>`` labels of a reserved identity, None if not reserved."""
    name = _NAMES.get(number)
    return Labels([Label(SOURCE_RESERVED, name)]) if name else None


def name_of(number: int) -> str | None:
    return _NAMES.get(number)


def number_of(name: str) -> int | None:
    """``"world"`` (or ``"reserved:world"``) -> 2."""
    if name.startswith(SOURCE_RESERVED + ":"):
        name = name[len(SOURCE_RESERVED) + 1:]
    return _BY_NAME.get(name)


def lookup(labels: Labels) -> int | None:
    """The reserved identity whose label set is exactly ``labels``, if any."""
    if len(labels) != 1:
        return None
    (lbl,) = tuple(labels)
    if lbl.source != SOURCE_RESERVED or lbl.value:
        return None
    return _BY_NAME.get(lbl.key)


def is_reserved(number: int) -> bool:
    return 0 < number < MIN_ALLOCATED


def all_reserved() -> dict[int, Labels]:
    return {num: labels_for(num) for num in _NAMES}  # type: ignore[misc]
