"""`cilium prefilter list|update|delete`: the XDP prefilter's deny list (Cilium's verbs and output)."""

from __future__ import annotations

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx, show
from docker_cilium.errors import BadRequest
from docker_cilium.prefilter.spec import parse_cidr


def _cidrs(values: tuple[str, ...]) -> list[str]:
    """``--cidr A --cidr B,C`` (Cilium's string slice), each checked before anything is sent."""
    out = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not out:
        raise click.UsageError("give at least one --cidr")
    for cidr in out:
        try:
            parse_cidr(cidr, "--cidr")
        except BadRequest as exc:
            raise click.BadParameter(str(exc).removeprefix("--cidr: "), param_hint="--cidr") from None
    return out


@click.group()
def prefilter() -> None:
    """Manage XDP CIDR filters"""


@prefilter.command("list")
@output_option
@pass_ctx
def list_(ctx: Context) -> None:
    """List CIDR filters"""
    reply = ctx.client.get("/prefilter")
    realized = reply["status"]["realized"]

    def text() -> None:
        click.echo(f"Revision: {realized['revision']}")
        for cidr in realized["deny"]:
            click.echo(cidr)
    show(ctx, reply, text)


def _change_command(name: str, method: str, verb: str, what: str, doc: str) -> click.Command:
    """``update`` (PATCH) and ``delete`` (DELETE): the same flags, Cilium's one-line answer."""

    @prefilter.command(name, help=doc)
    @click.option("--cidr", "cidrs", multiple=True, required=True,
                  help=f"CIDR prefixes to {what} (repeat, or comma-separated)")
    @click.option("--revision", type=click.IntRange(min=0), default=0, help="Update revision (0: the current one)")
    @output_option
    @pass_ctx
    def command(ctx: Context, cidrs: tuple[str, ...], revision: int) -> None:
        body = {"revision": revision, "deny": _cidrs(cidrs)}
        reply = ctx.client.request(method, "/prefilter", body=body)
        show(ctx, reply, lambda: click.echo(f"{verb} {len(body['deny'])} prefilter entries"))

    return command


update = _change_command("update", "PATCH", "Updated", "block", "Update CIDR filters")
delete = _change_command("delete", "DELETE", "Deleted", "delete", "Delete CIDR filters")
