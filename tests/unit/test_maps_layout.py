"""The ctypes mirrors in docker_cilium.datapath.maps.<name> match the C structs.

Two independent checks (no root needed, clang required):
* against the BTF of the compiled datapath object (what the BPF programs
  really use), read with bpftool;
* against a tiny host C program printing sizeof/offsetof from lib/common.h.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess

import pytest

from docker_cilium.datapath.maps import registry
from docker_cilium.datapath.loader import SRC_DIR, compile_datapath, clang_binary

# structs that appear in the object's BTF (map keys/values); notify_msg is a
# stack variable only (no BTF): the host C check covers it.
BTF_STRUCTS = ["endpoint_info", "endpoint_key", "policy_key", "policy_entry", "ipcache_key",
               "remote_endpoint_info", "ipv4_ct_tuple", "ipv6_ct_tuple", "ct_entry",
               "metrics_key", "metrics_value", "datapath_config", "ct_budget",
               "lb4_key", "lb6_key", "lb_service", "lb4_backend", "lb6_backend", "lb4_reverse_nat",
               "lb6_reverse_nat", "lpm_v4_key", "lpm_v6_key", "lpm_val"]


def _ctypes_members(cls):
    """[(name, offset, size)]; anonymous unions are reported as '(anon)'."""
    anon = set(getattr(cls, "_anonymous_", ()))
    out = []
    for name, _t in cls._fields_:
        d = getattr(cls, name)
        out.append(("(anon)" if name in anon else name, d.offset, d.size))
    return out


@pytest.fixture(scope="module")
def btf(tmp_path_factory):
    try:
        clang_binary()
    except FileNotFoundError as e:
        pytest.fail(str(e))
    bpftool = shutil.which("bpftool") or (
        "/usr/sbin/bpftool" if shutil.os.path.exists("/usr/sbin/bpftool") else None)
    if not bpftool:
        pytest.fail("bpftool is required (apt-get install bpftool)")
    obj = compile_datapath(out_dir=tmp_path_factory.mktemp("obj"))
    res = subprocess.run([bpftool, "-j", "btf", "dump", "file", str(obj)], capture_output=True,
                         text=True, check=True)
    types = {t["id"]: t for t in json.loads(res.stdout)["types"]}
    return types


def _type_size(types, tid):
    t = types[tid]
    k = t["kind"]
    if k in ("INT", "STRUCT", "UNION", "ENUM"):
        return t["size"]
    if k in ("TYPEDEF", "VOLATILE", "CONST"):
        return _type_size(types, t["type_id"])
    if k == "ARRAY":
        return t["nr_elems"] * _type_size(types, t["type_id"])
    raise AssertionError(f"unexpected BTF kind {k}")


@pytest.mark.parametrize("name", BTF_STRUCTS)
def test_struct_matches_btf(btf, name):
    found = [t for t in btf.values() if t["kind"] == "STRUCT" and t.get("name") == name]
    assert found, f"struct {name} not in the object's BTF"
    t = found[0]
    cls = registry.C_STRUCTS[name]
    assert ctypes.sizeof(cls) == t["size"], name
    btf_members = [(m["name"], m["bits_offset"] // 8, _type_size(btf, m["type_id"]))
                   for m in t["members"]]
    assert _ctypes_members(cls) == btf_members


def test_map_key_value_sizes_match_btf(btf):
    """Every map definition's key/value type has the ctypes size we use."""
    sizes = {t["name"]: t["size"] for t in btf.values()
             if t["kind"] == "STRUCT" and t.get("name") in registry.C_STRUCTS}
    for mname, (k, v, _percpu) in registry.MAP_TYPES.items():
        for part in (k, v):
            cname = part.__name__
            if cname in sizes:
                assert ctypes.sizeof(part) == sizes[cname], (mname, cname)


def test_struct_matches_host_c(tmp_path):
    """sizeof/offsetof from the real header compiled for the host."""
    lines = ['#include "lib/common.h"', '#include "lib/lb.h"', '#include "lib/prefilter.h"', "#include <stdio.h>", "#include <stddef.h>",
             "int main(void) {"]
    for name, cls in registry.C_STRUCTS.items():
        lines.append(f'printf("{name} size %zu\\n", sizeof(struct {name}));')
        anon = set(getattr(cls, "_anonymous_", ()))
        for fname, _t in cls._fields_:
            member = "ip4" if fname in anon else fname
            lines.append(f'printf("{name}.{fname} %zu\\n", offsetof(struct {name}, {member}));')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([clang_binary(), "-Wno-unused-function", "-I", str(SRC_DIR), str(src),
                    "-o", str(exe)], check=True, capture_output=True)
    got = dict(line.rsplit(" ", 1) for line in
               subprocess.run([str(exe)], capture_output=True, text=True,
                              check=True).stdout.splitlines())
    for name, cls in registry.C_STRUCTS.items():
        assert int(got[f"{name} size"]) == ctypes.sizeof(cls), name
        for fname, _t in cls._fields_:
            assert int(got[f"{name}.{fname}"]) == getattr(cls, fname).offset, (name, fname)
