"""`cilium config`: show the agent's options, change the runtime ones."""

from __future__ import annotations

import click

from docker_cilium.cli.common import Context, api_call, output_option, parse_options, pass_ctx
from docker_cilium.cli.output import emit_json


@click.command()
@click.argument("options", nargs=-1, metavar="[Key=Value]...")
@output_option
@pass_ctx
@api_call
def config(ctx: Context, options: tuple[str, ...]) -> None:
    """Cilium configuration options

    Without arguments, show them; `cilium config PolicyEnforcement=always Debug=true`
    changes runtime options (persisted: a restarted agent keeps them).
    """
    changes = parse_options(options)
    if changes:
        cfg = ctx.client.request("PATCH", "/config", body={"options": changes})
    else:
        cfg = ctx.client.get("/config")
    if ctx.output == "json":
        emit_json(cfg)
        return
    for key, val in sorted((cfg.get("options") or {}).items()):
        click.echo(f"{key:<24}{val}")
    if changes:
        return
    for key, val in sorted(cfg["configuration"].items()):
        click.echo(f"{key:<24}{val}")
