"""Options every verb shares: the API socket (-H) and the output format (-o)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from docker_cilium import defaults
from docker_cilium.cli.client import Client
from docker_cilium.cli.output import emit_json


class Context:
    def __init__(self, host: str, output: str) -> None:
        self.client = Client(host)
        self.output = output


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``-o json`` on each command, as Cilium accepts it after the verb."""

    @click.option("-o", "--output", "output", type=click.Choice(["", "json"]), default=None,
                  help="Output format (json)")
    @functools.wraps(fn)
    def wrapper(*args: Any, output: str | None = None, **kw: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        if output is not None and ctx is not None:
            ctx.output = output
        return fn(*args, **kw)

    return wrapper


def show(ctx: Context, data: Any, text: Callable[[], None]) -> None:
    """``-o json``: ``data`` (what the API returned, or the JSON model); else ``text()`` prints it for people."""
    if ctx.output == "json":
        emit_json(data)
    else:
        text()


def parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``Key=Value`` arguments (as `cilium endpoint config` / `cilium config` take them)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise click.BadParameter(f"{pair!r}: expected Key=Value, e.g. PolicyEnforcement=always",
                                     param_hint="OPTION")
        out[key.strip()] = value.strip()
    return out


pass_ctx = click.make_pass_decorator(Context)
DEFAULT_HOST = defaults.API_SOCKET
