"""`cilium config`: show the agent's options, change the runtime ones."""

from __future__ import annotations

import click

from docker_cilium.cli.common import Context, output_option, parse_options, pass_ctx, show
from docker_cilium.cli.output import print_options


@click.command()
@click.argument("options", nargs=-1, metavar="[Key=Value]...")
@output_option
@pass_ctx
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
    show(ctx, cfg, lambda: _text(cfg, with_configuration=not changes))


def _text(cfg: dict, with_configuration: bool) -> None:
    """The runtime options; after a change only those, else the static configuration too."""
    print_options(cfg.get("options") or {})
    if with_configuration:
        print_options(cfg["configuration"])
