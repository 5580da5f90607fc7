"""`cilium`: Cilium's CLI verbs against the agent API."""

from __future__ import annotations

import importlib

import click

from docker_cilium import logging as dclog
from docker_cilium.cli.common import DEFAULT_HOST, Context
from docker_cilium.errors import APIError

#: Each verb's module, imported when the verb is used (or listed): the
#: datapath, monitor and metrics modules behind some verbs take a few
#: hundred ms to import, which every `cilium policy import` paid.
VERBS = {"bpf": "bpf:bpf", "cleanup": "cleanup:cleanup", "completion": "completion:completion",
         "config": "config:config", "debuginfo": "debuginfo:debuginfo", "endpoint": "endpoint:endpoint",
         "identity": "identity:identity", "kvstore": "kvstore:kvstore", "map": "maps:map_",
         "metrics": "metrics:metrics", "monitor": "monitor:monitor", "node": "node:node", "policy": "policy:policy",
         "prefilter": "prefilter:prefilter", "service": "service:service", "status": "status:status",
         "version": "status:version"}


class _Cli(click.Group):
    """The root group: verbs are loaded from VERBS on first use (click's lazy
    group: ``list_commands``/``get_command``), and an API error from any verb
    is one line (``Error: ...``) and exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in VERBS:
            return None
        module, attr = VERBS[name].split(":")
        return getattr(importlib.import_module(f"docker_cilium.cli.{module}"), attr)  # type: ignore[no-any-return]

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except APIError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-H", "--host", default=DEFAULT_HOST, envvar="CILIUM_HOST", help="URI to the agent API socket")
@click.option("-o", "--output", default="", type=click.Choice(["", "json"]), help="Output format")
@click.pass_context
def cli(ctx: click.Context, host: str, output: str) -> None:
    """CLI for interacting with the local docker-cilium agent"""
    dclog.setup(fmt="text", quiet=True)
    ctx.obj = Context(host, output)



def main() -> None:
    cli()


if __name__ == "__main__":
    main()
