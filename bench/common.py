"""What several benchmarks share: their command line and a private bpffs root.

Each benchmark repeats a measurement ``--rounds`` times for ``--seconds``;
the ones that drive the agent through dockerd also take the CLI's path.
"""

from __future__ import annotations

import argparse
import os
import random

from docker_cilium import defaults


def round_args(doc: str | None, cilium: bool = False) -> argparse.Namespace:
    """Parse ``--rounds``/``--seconds`` (and ``--cilium`` when asked)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    if cilium:
        ap.add_argument("--cilium", default="cilium", help="path of the cilium CLI")
    return ap.parse_args()


def private_bpf_base() -> str:
    """A bpffs directory of this run alone, so that its pins never meet the
    agent's (or another benchmark's) maps."""
    return os.path.join(defaults.BPFFS_ROOT, f"dcbench-{os.getpid()}-{random.randrange(1 << 30):x}")
