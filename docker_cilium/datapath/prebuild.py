"""`python -m docker_cilium.datapath.prebuild [OUT_DIR]`: compile the datapath
objects the agent loads (every top-level ``bpf_src/bpf_*.c``: bpf_lxc.c,
bpf_xdp.c, ...) into OUT_DIR (default ``defaults.BPF_PREBUILT_DIR``), named
as :func:`loader.prebuilt_object` looks them up.

The agent image's build stage runs this, so the run stage needs no clang: the
agent compiles its objects without defines (every per-node value lives in a
map), so one object per source file serves every node and configuration.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from docker_cilium import defaults
from docker_cilium.datapath.loader import SRC_DIR, compile_datapath, datapath_hash


def prebuild(out_dir: str | Path = defaults.BPF_PREBUILT_DIR, src_dir: Path = SRC_DIR) -> list[Path]:
    """Compile with clang and store each object under its compiler-free name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = []
    with tempfile.TemporaryDirectory() as cache:
        for source in sorted(p.name for p in Path(src_dir).glob("bpf_*.c")):
            built = compile_datapath(src_dir, cache, source=source)
            targets.append(out / f"{datapath_hash(src_dir, {}, None, source)}.o")
            shutil.copyfile(built, targets[-1])
    return targets


def main(argv: list[str]) -> None:
    for obj in prebuild(*argv[:1]):
        print(obj)


if __name__ == "__main__":
    main(sys.argv[1:])
