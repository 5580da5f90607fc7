"""`cilium completion bash|zsh|fish`: click's shell completion script for `cilium`.

Installable as usual: ``cilium completion bash > /etc/bash_completion.d/cilium``
(or ``source <(cilium completion bash)`` in a shell); the script asks
``cilium`` itself for the candidates (``_CILIUM_COMPLETE=<shell>_complete``),
so it follows the installed verbs and options.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

PROG_NAME = "cilium"
COMPLETE_VAR = "_CILIUM_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Output shell completion code for bash, zsh or fish"""
    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one of click's
    root = ctx.find_root().command
    click.echo(cls(root, {}, PROG_NAME, COMPLETE_VAR).source())
