"""Entities: named groups of peers (``fromEntities``/``toEntities``).

Matching is done on identity labels so it works the same for resolution (over
the identity table) and for ``policy trace`` (over raw labels):

* ``world``   – ``reserved:world``: identity 2 and every CIDR identity;
* ``cluster`` – everything that is *not* world (endpoints, host, init, health…);
* ``host``    – ``reserved:host`` (identity 1);
* ``init``    – ``reserved:init`` (identity 5);
* ``remote-node`` – ``reserved:remote-node`` (identity 6): the other nodes' hosts;
* ``all``     – any peer at all (the datapath wildcard identity 0).
"""

from __future__ import annotations

import json
from typing import Any

from docker_cilium.identity.reserved import HOST_LABEL, INIT_LABEL, REMOTE_NODE_LABEL, WORLD_LABEL

from ._util import expect_string
from .errors import PolicyValidationError
from .selector import LabelSet

ENTITY_ALL = "all"
ENTITY_WORLD = "world"
ENTITY_CLUSTER = "cluster"
ENTITY_HOST = "host"
ENTITY_INIT = "init"
ENTITY_REMOTE_NODE = "remote-node"
ENTITIES = (ENTITY_ALL, ENTITY_WORLD, ENTITY_CLUSTER, ENTITY_HOST, ENTITY_INIT, ENTITY_REMOTE_NODE)


def parse_entity(data: Any, path: str) -> str:
    name = expect_string(data, path, "entity")
    if name not in ENTITIES:
        raise PolicyValidationError(
            path, f"unsupported entity {json.dumps(name)} (supported: {', '.join(ENTITIES)})"
        )
    return name


def entity_matches(entity: str, labels: LabelSet) -> bool:
    if entity == ENTITY_ALL:
        return True
    if entity == ENTITY_WORLD:
        return WORLD_LABEL in labels.strings
    if entity == ENTITY_CLUSTER:
        return WORLD_LABEL not in labels.strings
    if entity == ENTITY_HOST:
        return HOST_LABEL in labels.strings
    if entity == ENTITY_INIT:
        return INIT_LABEL in labels.strings
    if entity == ENTITY_REMOTE_NODE:
        return REMOTE_NODE_LABEL in labels.strings
    raise AssertionError(f"unvalidated entity {entity!r}")
