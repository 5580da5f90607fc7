"""`cilium debuginfo`: the agent's report for an issue, as markdown or JSON."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any, Callable

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx
from docker_cilium.cli.identity import identity_table
from docker_cilium.cli.output import print_options, table
from docker_cilium.cli.status import print_status
from docker_cilium.version import version_line


def _captured(fn: Callable[[], None]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn()
    return buf.getvalue().rstrip("\n")


def _block(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text}\n```"


def _failed(section: Any) -> str | None:
    """A section the agent could not collect holds ``{"error": ...}``."""
    if isinstance(section, dict) and set(section) == {"error"}:
        return f"Not available: {section['error']}"
    return None


def _status(st: Any) -> str:
    return _failed(st) or _captured(lambda: print_status(st, True, True, True))


def _config(cfg: Any) -> str:
    return _failed(cfg) or _captured(lambda: print_options(cfg.get("options") or {}))


def _endpoints(eps: Any) -> str:
    return _failed(eps) or _captured(lambda: table(
        ["ENDPOINT", "IDENTITY", "LABELS", "IPv6", "IPv4", "STATUS"],
        [[e["id"], e["identity"]["id"], "\n".join(e["labels"].get("effective") or []),
          e["addressing"]["ipv6"], e["addressing"]["ipv4"], e["state"]] for e in eps]))


def _identities(idents: Any) -> str:
    return _failed(idents) or _captured(lambda: identity_table(idents))


def _policy(pol: Any) -> str:
    return _failed(pol) or f"Revision: {pol['revision']}\n" + pol["policy"]


def _maps(maps: Any) -> str:
    return _failed(maps) or _captured(lambda: table(
        ["NAME", "ENTRIES", "MAX ENTRIES", "KEY SIZE", "VALUE SIZE"],
        [[m["name"], m["entries"], m["max-entries"], m["key-size"], m["value-size"]] for m in maps]))


def markdown(info: dict[str, Any]) -> str:
    """The report as Cilium's debuginfo prints it: one heading and block per section."""
    tools = "\n".join(f"{k:<12}{v}" for k, v in sorted(info.get("tool-versions", {}).items()))
    sections = [
        ("Cilium version", version_line(info.get("cilium-version") or {})),
        ("Kernel version", info.get("kernel-version", "")),
        ("Tool versions", tools),
        ("Cilium status", _status(info.get("cilium-status"))),
        ("Cilium runtime options", _config(info.get("cilium-config"))),
        ("Cilium endpoint list", _endpoints(info.get("endpoint-list"))),
        ("Identities", _identities(info.get("identities"))),
        ("Policy", _policy(info.get("policy"))),
        ("BPF maps", _maps(info.get("maps"))),
        ("Recent agent log records", "\n".join(info.get("agent-log") or [])),
    ]
    out = ["# Cilium debug information"]
    for title, body in sections:
        out += [f"#### {title}", _block(body)]
    return "\n\n".join(out) + "\n"


@click.command()
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False, writable=True),
              help="Write the report to FILE instead of the terminal")
@output_option
@pass_ctx
def debuginfo(ctx: Context, path: str | None) -> None:
    """Request available debugging information from the agent"""
    info = ctx.client.get("/debuginfo")
    text = json.dumps(info, indent=2) + "\n" if ctx.output == "json" else markdown(info)
    if path is None:
        click.echo(text, nl=False)
        return
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    click.echo(f"Debug information written to {path}", err=True)
