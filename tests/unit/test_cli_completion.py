"""`cilium completion bash|zsh|fish`: the script installs and completes.

The bash script is sourced into a real bash and its completion function run
the way bash runs it on <TAB>; it calls back into `cilium` (the console
script of this environment, importing this tree through PYTHONPATH).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}


def cilium(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cilium"), *args], capture_output=True, text=True, timeout=60,
                          env={**ENV, **(env or {})})


def bash_complete(words: str, cword: int) -> list[str]:
    """Source the script, then do what bash does on <TAB> after ``words``."""
    script = cilium("completion", "bash").stdout
    line = words.split(" ")
    prog = f"""{script}
COMP_WORDS=({' '.join(repr(w) for w in line)}); COMP_CWORD={cword}
_cilium_completion cilium
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "--norc", "-c", prog], capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_bash_completes_verbs_and_subverbs():
    assert shutil.which("bash")
    assert bash_complete("cilium kv", 1) == ["kvstore"]
    assert bash_complete("cilium map ", 2) == ["get", "list"]
    assert "--recursive" in bash_complete("cilium kvstore get --", 3)


@pytest.mark.parametrize("shell, marker", [
    ("bash", "_CILIUM_COMPLETE=bash_complete"),
    ("zsh", "#compdef cilium"),
    ("fish", "complete --no-files --command cilium"),
])
def test_scripts(shell, marker):
    res = cilium("completion", shell)
    assert res.returncode == 0 and marker in res.stdout


@pytest.mark.parametrize("shell, cword", [("zsh", "2"), ("fish", "")])  # fish passes the current token
def test_zsh_and_fish_protocol(shell, cword):
    """What their scripts ask `cilium` for (the shells themselves are not installed here)."""
    res = cilium(env={"_CILIUM_COMPLETE": f"{shell}_complete", "COMP_WORDS": "cilium map ", "COMP_CWORD": cword})
    assert res.returncode == 0
    assert "get" in res.stdout and "list" in res.stdout


def test_unknown_shell():
    res = cilium("completion", "tcsh")
    assert res.returncode == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in res.stderr
