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


class _LazyCommands(dict):  # type: ignore[type-arg]
    """The root group's ``commands``: a verb's module is imported on first use
    of that verb; listing them (help, completion) imports them all."""

    def __init__(self, specs: dict[str, str]) -> None:
        super().__init__()
        self._specs = specs

    def _load(self, name: object) -> None:
        if isinstance(name, str) and name in self._specs and not dict.__contains__(self, name):
            module, attr = self._specs[name].split(":")
            dict.__setitem__(self, name, getattr(importlib.import_module(f"docker_cilium.cli.{module}"), attr))

    def _load_all(self) -> None:
        for name in self._specs:
            self._load(name)

    def __getitem__(self, name: str) -> click.Command:
        self._load(name)
        return dict.__getitem__(self, name)  # type: ignore[no-any-return]

    def get(self, name: str, default: object = None) -> object:  # type: ignore[override]
        self._load(name)
        return dict.get(self, name, default)

    def __contains__(self, name: object) -> bool:
        return (isinstance(name, str) and name in self._specs) or dict.__contains__(self, name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        return len(set(self._specs) | set(dict.keys(self)))

    def keys(self):  # type: ignore[no-untyped-def]
        self._load_all()
        return dict.keys(self)

    def items(self):  # type: ignore[no-untyped-def]
        self._load_all()
        return dict.items(self)

    def values(self):  # type: ignore[no-untyped-def]
        self._load_all()
        return dict.values(self)


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


cli.commands = _LazyCommands(VERBS)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
