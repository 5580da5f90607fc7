"""`cilium identity list|get`."""

from __future__ import annotations

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx, show
from docker_cilium.cli.output import table


def identity_table(idents: list[dict]) -> None:
    """Identities as `cilium identity list` prints them (also in `cilium debuginfo`)."""
    table(["ID", "LABELS"], [[i["id"], "\n".join(i["labels"])] for i in idents])


@click.group()
def identity() -> None:
    """Manage security identities"""


@identity.command("list")
@click.argument("labels", nargs=-1)
@output_option
@pass_ctx
def list_(ctx: Context, labels: tuple[str, ...]) -> None:
    """List identities (those with all the given labels, if any)"""
    idents = ctx.client.get("/identity", query={"labels": ",".join(labels)} if labels else None)
    show(ctx, idents, lambda: identity_table(idents))


@identity.command("get")
@click.argument("identity_id")
@output_option
@pass_ctx
def get(ctx: Context, identity_id: str) -> None:
    """Retrieve information about an identity"""
    ident = ctx.client.get(f"/identity/{identity_id}")
    show(ctx, ident, lambda: identity_table([ident]))  # JSON: one object, as the API returns it
