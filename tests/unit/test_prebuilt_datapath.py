"""The agent image has no clang: its datapath object is compiled in the build
stage (`python -m docker_cilium.datapath.prebuild`) and found by the sources'
hash at run time."""

from __future__ import annotations

import shutil

import pytest

from docker_cilium import defaults
from docker_cilium.datapath import loader, prebuild


@pytest.fixture
def no_clang(monkeypatch, tmp_path):
    """A host like the run stage: no clang; prebuilt objects under tmp_path/prebuilt."""
    def missing() -> str:
        raise FileNotFoundError("clang not found")
    monkeypatch.setattr(loader, "clang_binary", missing)
    monkeypatch.setattr(defaults, "BPF_PREBUILT_DIR", str(tmp_path / "prebuilt"))
    return tmp_path / "prebuilt"


def test_prebuild_output_is_what_the_loader_loads_without_clang(tmp_path, monkeypatch):
    src = tmp_path / "bpf_src"
    shutil.copytree(loader.SRC_DIR, src)
    out = tmp_path / "prebuilt"
    built = prebuild.prebuild(out, src)  # real clang, as in the image's build stage
    sources = sorted(p.name for p in src.glob("bpf_*.c"))
    assert "bpf_lxc.c" in sources and len(built) == len(sources) == len(set(built))
    assert all(o.read_bytes()[:4] == b"\x7fELF" for o in built)

    def missing() -> str:
        raise FileNotFoundError("clang not found")
    monkeypatch.setattr(loader, "clang_binary", missing)
    monkeypatch.setattr(defaults, "BPF_PREBUILT_DIR", str(out))
    # Every object the agent compiles (bpf_lxc.c at start, bpf_xdp.c for the prefilter...).
    assert [loader.compile_datapath(src, tmp_path / "cache", source=s) for s in sources] == built

    # A changed source is not served by the old object: the hash covers the sources.
    with open(src / "bpf_lxc.c", "a") as f:
        f.write("\n/* changed */\n")
    with pytest.raises(FileNotFoundError, match="no prebuilt datapath object"):
        loader.compile_datapath(src, tmp_path / "cache")


def test_without_clang_or_prebuilt_object_the_error_names_both_fixes(no_clang, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        loader.compile_datapath(loader.SRC_DIR, tmp_path / "cache")
    assert "apt-get install clang" in str(err.value) and "rebuild the image" in str(err.value)
    assert str(no_clang) in str(err.value)


def test_prebuilt_name_does_not_depend_on_the_compiler(monkeypatch):
    """The build stage's clang must not be needed to name the object at run time."""
    with_clang = loader.datapath_hash(loader.SRC_DIR, {}, loader.clang_binary())
    without = loader.datapath_hash(loader.SRC_DIR, {}, None)
    monkeypatch.setattr(loader, "_clang_version", lambda clang: "clang version 99")
    assert loader.datapath_hash(loader.SRC_DIR, {}, None) == without
    assert loader.datapath_hash(loader.SRC_DIR, {}, loader.clang_binary()) != with_clang
