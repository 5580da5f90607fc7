"""Every map the object pins is known to the agent by name: opened through
its module (registry.MAP_TYPES) or listed as used by the programs alone.
Drop reasons and flags are held to the headers by test_c_constants.py."""

from __future__ import annotations

import re

from docker_cilium.datapath.loader import SRC_DIR
from docker_cilium.datapath.maps import registry


def test_every_pinned_map_is_named():
    headers = "".join(p.read_text() for p in sorted((SRC_DIR / "lib").glob("*.h")))
    pinned = set(re.findall(r"^\}\s*(cilium_\w+)\s+__section", headers, re.M))
    assert pinned, "no pinned map found in bpf_src/lib/*.h"
    known = set(registry.MAP_TYPES) | set(registry.DATAPATH_ONLY_MAPS)
    assert pinned == known
