"""LBMap writes the service maps of bpf_src/lib/lb.h the way the datapath reads them.

Real maps from the compiled datapath in a private pin root; the entries are
read back raw (slot by slot) as well as through ``dump``.
"""

from __future__ import annotations

import pytest

from docker_cilium.datapath.bpf import u16, u32
from docker_cilium.datapath.maps.lbmap import LB4_REVNAT_MAP, LB4_SERVICES_MAP, LB6_BACKENDS_MAP, L4Addr


def _slots(dp, mapname: str) -> dict[int, tuple[int, int]]:
    return {k.backend_slot: (v.backend_id, v.count) for k, v in dp.maps.raw[mapname].items()}


def test_upsert_shrink_and_delete_v4(datapath):
    lb = datapath.maps.lb
    fe = L4Addr("10.96.0.10", 80, "TCP")
    lb.upsert_service(7, fe, [(1, L4Addr("10.1.0.1", 8080)), (2, L4Addr("10.1.0.2", 8080))])
    assert _slots(datapath, LB4_SERVICES_MAP) == {0: (0, 2), 1: (1, 0), 2: (2, 0)}
    [svc] = lb.dump()
    assert (svc.id, svc.frontend) == (7, fe)
    assert svc.backends == ((1, L4Addr("10.1.0.1", 8080)), (2, L4Addr("10.1.0.2", 8080)))
    rn = datapath.maps.raw[LB4_REVNAT_MAP].lookup(u16(7))
    assert bytes(rn.address) == bytes([10, 96, 0, 10]) and rn.port == 80 << 8  # network order

    lb.upsert_service(7, fe, [(2, L4Addr("10.1.0.2", 8080))])
    assert _slots(datapath, LB4_SERVICES_MAP) == {0: (0, 1), 1: (2, 0)}

    assert lb.delete_service(7, fe)
    assert not lb.delete_service(7, fe)
    assert _slots(datapath, LB4_SERVICES_MAP) == {}
    assert datapath.maps.raw[LB4_REVNAT_MAP].lookup(u16(7)) is None
    assert lb.dump() == []


def test_v6_udp_and_family_mismatch(datapath):
    lb = datapath.maps.lb
    fe = L4Addr("fd00::10", 53, "UDP")
    lb.upsert_service(9, fe, [(3, L4Addr("f00d::1", 5353, "UDP"))])
    [svc] = lb.dump()
    assert svc.frontend == fe and svc.backends == ((3, L4Addr("f00d::1", 5353, "UDP")),)
    assert datapath.maps.raw[LB6_BACKENDS_MAP].lookup(u32(3)) is not None
    with pytest.raises(ValueError, match="IPv6"):
        lb.upsert_service(9, fe, [(4, L4Addr("10.1.0.4", 53, "UDP"))])
    assert lb.dump() == [svc]
