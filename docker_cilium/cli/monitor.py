"""`cilium monitor`: the agent's event stream (GET /v1/monitor) in Cilium's
line format, verbose form (-v, --hex) or as JSON lines (-j)."""

from __future__ import annotations

import json
import sys

import click

from docker_cilium.cli.common import Context, pass_ctx
from docker_cilium.monitor.format import render, start_line

TYPES = ("drop", "trace", "policy-verdict", "debug", "capture", "agent", "l7")


@click.command()
@click.option("-t", "--type", "types", multiple=True, type=click.Choice(TYPES),
              help="Filter by event type (repeatable)")
@click.option("--from", "from_", multiple=True, type=click.IntRange(0, 0xFFFF),
              help="Filter by source endpoint ID (repeatable)")
@click.option("--to", multiple=True, type=click.IntRange(0, 0xFFFF),
              help="Filter by destination endpoint ID (repeatable)")
@click.option("--related-to", multiple=True, type=click.IntRange(0, 0xFFFF),
              help="Filter by either source or destination endpoint ID (repeatable)")
@click.option("-v", "--verbose", count=True, help="Show decoded packet headers")
@click.option("--hex", "hex_", is_flag=True, help="Show the captured packet bytes in hex")
@click.option("-j", "--json", "as_json", is_flag=True, help="One JSON object per line")
@pass_ctx
def monitor(ctx: Context, types: tuple[str, ...], from_: tuple[int, ...], to: tuple[int, ...],
            related_to: tuple[int, ...], verbose: int, hex_: bool, as_json: bool) -> None:
    """Display BPF program events

    Drops, traces, policy verdicts, debug, agent and L7 (proxy access-log) events as they happen,
    until interrupted. Filters are applied by the agent. A stream the agent
    ends or breaks (it stopped, or was killed) is an error: exit status 1.
    """
    query = [("type", t) for t in types] + [("from", str(i)) for i in from_] + \
        [("to", str(i)) for i in to] + [("related-to", str(i)) for i in related_to]
    out = sys.stdout
    try:
        for raw in ctx.client.stream("/monitor", query):
            event = json.loads(raw)
            if event["type"] == "monitor-start":
                if not as_json:
                    out.write(start_line(event) + "\nPress Ctrl-C to quit\n")
            elif as_json:
                out.write(raw.decode())
            else:
                out.write("\n".join(render(event, verbose, hex_)) + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `cilium monitor | head`: the reader left
        sys.stderr.close()
