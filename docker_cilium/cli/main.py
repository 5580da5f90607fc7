"""`cilium`: Cilium's CLI verbs against the agent API."""

from __future__ import annotations

import click

from docker_cilium import logging as dclog
from docker_cilium.cli.common import DEFAULT_HOST, Context
from docker_cilium.errors import APIError
from docker_cilium.cli.bpf import bpf
from docker_cilium.cli.cleanup import cleanup
from docker_cilium.cli.completion import completion
from docker_cilium.cli.config import config
from docker_cilium.cli.debuginfo import debuginfo
from docker_cilium.cli.endpoint import endpoint
from docker_cilium.cli.identity import identity
from docker_cilium.cli.kvstore import kvstore
from docker_cilium.cli.maps import map_
from docker_cilium.cli.monitor import monitor
from docker_cilium.cli.metrics import metrics
from docker_cilium.cli.node import node
from docker_cilium.cli.policy import policy
from docker_cilium.cli.prefilter import prefilter
from docker_cilium.cli.service import service
from docker_cilium.cli.status import status, version


class _Cli(click.Group):
    """The root group: an API error from any verb is one line (``Error: ...``) and exit 1."""

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


for command in (bpf, cleanup, completion, config, debuginfo, endpoint, identity, kvstore, map_, metrics, monitor,
                node, policy, prefilter, service, status, version):
    cli.add_command(command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
