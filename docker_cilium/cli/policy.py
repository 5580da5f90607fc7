"""`cilium policy ...`: import, get, delete, validate, trace, wait."""

from __future__ import annotations

import json
import re
import sys
import time

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx
from docker_cilium.cli.output import emit_json
from docker_cilium.errors import Unavailable


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


def _validate(path: str, data: bytes) -> None:
    """Parse locally, so a bad file is reported even without an agent
    (imported here: the policy package is not needed to send a document)."""
    from docker_cilium.policy.api import PolicyValidationError, parse_rules

    try:
        parse_rules(data)
    except PolicyValidationError as exc:
        raise click.ClickException(f"{'stdin' if path == '-' else path}: {exc}") from None


def _revision(ctx: Context, reply: dict) -> None:
    if ctx.output == "json":
        emit_json({"revision": reply["revision"], "policy": json.loads(reply["policy"])})
    else:
        click.echo(f"Revision: {reply['revision']}")


@click.group()
def policy() -> None:
    """Manage security policies"""


@policy.command("import")
@click.argument("path", metavar="FILE|-")
@output_option
@pass_ctx
def import_(ctx: Context, path: str) -> None:
    """Import security policy in JSON format"""
    data = _read(path)
    # The agent validates with the same code and names the same JSON path, so
    # the document is parsed once (100,000 rules take seconds), not here too;
    # only when no agent answers is it checked here, so a bad file is still
    # reported as such.
    try:
        reply = ctx.client.request("PUT", "/policy", raw=data)
    except Unavailable:
        _validate(path, data)
        raise
    _revision(ctx, reply)


@policy.command("get")
@click.argument("labels", nargs=-1)
@output_option
@pass_ctx
def get(ctx: Context, labels: tuple[str, ...]) -> None:
    """Display policy node information (rules with all the given labels)"""
    reply = ctx.client.get("/policy", query={"labels": ",".join(labels)} if labels else None)
    if ctx.output == "json":
        emit_json({"revision": reply["revision"], "policy": json.loads(reply["policy"])})
        return
    click.echo(reply["policy"])
    click.echo(f"Revision: {reply['revision']}")


@policy.command("delete")
@click.argument("labels", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Delete all policies")
@output_option
@pass_ctx
def delete(ctx: Context, labels: tuple[str, ...], all_: bool) -> None:
    """Delete policy rules whose labels contain the given labels"""
    if not labels and not all_:
        raise click.UsageError("give the labels of the rules to delete, or --all to delete every rule")
    if labels:
        reply = ctx.client.request("DELETE", "/policy", body=list(labels))
    else:
        reply = ctx.client.request("DELETE", "/policy", query={"all": "true"})
    _revision(ctx, reply)


@policy.command("validate")
@click.argument("paths", nargs=-1, required=True, metavar="FILE|-...")
@output_option
@pass_ctx
def validate(ctx: Context, paths: tuple[str, ...]) -> None:
    """Validate a policy file locally (no agent needed)"""
    for path in paths:
        _validate(path, _read(path))
    if ctx.output == "json":
        emit_json({"valid": True})
    else:
        click.echo("All policy elements are valid.")


def _labels_of_identity(ctx: Context, ident: int) -> list[str]:
    return ctx.client.get(f"/identity/{ident}")["labels"]


def _labels_of_endpoint(ctx: Context, ref: str) -> list[str]:
    """The labels its identity is made of (container labels, plus added, minus removed)."""
    return list(ctx.client.get(f"/endpoint/{ref}")["labels"]["effective"])


@policy.command("trace")
@click.option("-s", "--src", multiple=True, metavar="LABEL", help="Source label context")
@click.option("-d", "--dst", multiple=True, metavar="LABEL", help="Destination label context")
@click.option("--dport", multiple=True, metavar="PORT[/PROTO]", help="Destination port (e.g. 80/TCP)")
@click.option("--src-identity", type=int, help="Source identity")
@click.option("--dst-identity", type=int, help="Destination identity")
@click.option("--src-endpoint", help="Source endpoint (ID or prefixed reference)")
@click.option("--dst-endpoint", help="Destination endpoint (ID or prefixed reference)")
@output_option
@pass_ctx
def trace(ctx: Context, src: tuple[str, ...], dst: tuple[str, ...], dport: tuple[str, ...],
          src_identity: int | None, dst_identity: int | None, src_endpoint: str | None,
          dst_endpoint: str | None) -> None:
    """Trace a policy decision between two label sets (exit 0 whatever the verdict)"""
    src_labels, dst_labels = list(src), list(dst)
    if src_identity is not None:
        src_labels += _labels_of_identity(ctx, src_identity)
    if dst_identity is not None:
        dst_labels += _labels_of_identity(ctx, dst_identity)
    if src_endpoint:
        src_labels += _labels_of_endpoint(ctx, src_endpoint)
    if dst_endpoint:
        dst_labels += _labels_of_endpoint(ctx, dst_endpoint)
    if not src_labels or not dst_labels:
        raise click.UsageError("need a source and a destination: -s/--src-identity/--src-endpoint "
                               "and -d/--dst-identity/--dst-endpoint")
    body = {"from": src_labels, "to": dst_labels, "dports": list(dport)}
    reply = ctx.client.request("GET", "/policy/resolve", body=body)
    if ctx.output == "json":
        emit_json(reply)
        return
    final = f"Final verdict: {reply['verdict'].upper()}"
    lines = reply["log"].rstrip("\n").split("\n") if reply["log"] else []
    for line in lines:
        click.echo(line)
    if not lines or lines[-1] != final or any(l.startswith("Final verdict:") for l in lines[:-1]):
        click.echo(final)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``120s``, ``2m``, ``500ms``, ``1h`` or plain seconds (Go-style, like Cilium)."""
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"invalid duration {text!r} (e.g. 120s, 2m, 500ms)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _enforced_revision(ep: dict) -> int:
    pol = ep.get("policy") or {}
    rev = pol.get("revision", 0)
    return int(rev or 0)


@policy.command("wait")
@click.argument("revision", type=int)
@click.option("--max-wait-time", default="120s", show_default=True, help="Maximum time to wait")
@click.option("--sleep-time", default="250ms", hidden=True)
@output_option
@pass_ctx
def wait(ctx: Context, revision: int, max_wait_time: str, sleep_time: str) -> None:
    """Wait until all endpoints enforce policy revision REVISION"""
    deadline = time.monotonic() + parse_duration(max_wait_time)
    pause = parse_duration(sleep_time)
    while True:
        eps = [ep for ep in ctx.client.get("/endpoint")
               if ep.get("state") not in ("disconnecting", "disconnected")]
        done = sum(1 for ep in eps if _enforced_revision(ep) >= revision)
        if done == len(eps):
            if ctx.output == "json":
                emit_json({"revision": revision, "endpoints": len(eps), "ready": done})
            else:
                click.echo(f"Waiting for endpoints to run policy revision {revision}: {done}/{len(eps)}")
                click.echo("Done.")
            return
        if time.monotonic() >= deadline:
            raise click.ClickException(f"timeout after {max_wait_time} waiting for policy revision {revision}: "
                                       f"{done}/{len(eps)} endpoints enforce it")
        time.sleep(pause)
