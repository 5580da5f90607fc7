"""`cilium cleanup [-f] [--all-state]`: remove what the agent left on the host.

Runs only while no agent does: it takes the agent's own lock
(:mod:`docker_cilium.agent.lock`) on the state directories for the whole
run, so an agent cannot start half-way through either, and it refuses when
something answers on the API or plugin socket (an agent started with other
directories). The host side (filters, maps, links, routes, chains) is
:mod:`docker_cilium.datapath.cleanup`; this module adds the run state (the
compiled datapath, stale sockets) and, with ``--all-state``, the persistent
state (the embedded stores): Cilium's ``cilium cleanup`` flags and prompt.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys

import click

from docker_cilium import defaults
from docker_cilium.agent.lock import LOCK_FILE, AgentLock, AlreadyRunning
from docker_cilium.cli.common import Context, pass_ctx

STORE_FILES = ("kvstore.db", "node-state.db")


def _served(path: str) -> bool:
    """Whether a process accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _state_files(state_dir: str, lib_dir: str, sockets: tuple[str, ...], all_state: bool) -> list[str]:
    """Run state (compiled objects, stale sockets, the lock) and, with ``all_state``, the stores."""
    out = [defaults.bpf_object_dir(state_dir), os.path.join(state_dir, LOCK_FILE)]
    out += list(sockets)
    if all_state:
        out += [os.path.join(lib_dir, f + sfx) for f in STORE_FILES for sfx in ("", "-wal", "-shm")]
        out.append(os.path.join(lib_dir, LOCK_FILE))
    return [p for p in dict.fromkeys(out) if os.path.lexists(p)]


def _remove_files(paths: list[str], dirs: list[str]) -> tuple[list[str], list[str]]:
    done, errors = [], []
    for p in paths:
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
            done.append(f"removed {p}")
        except OSError as exc:
            errors.append(f"{p}: {exc.strerror}")
    for d in dirs:
        try:
            os.rmdir(d)  # only when nothing else is left in it
            done.append(f"removed {d}")
        except OSError:
            pass
    return done, errors


def _confirm() -> bool:
    click.echo("The command is non-revertible, do you want to continue [y/N]?")
    return sys.stdin.readline().strip() == "y"


@click.command()
@click.option("-f", "--force", is_flag=True, help="Skip confirmation")
@click.option("--all-state", is_flag=True, help="Also remove the persistent state (the embedded stores "
                                                "in --lib-dir: addresses, endpoints, identities, policy)")
@click.option("--lib-dir", default=defaults.LIB_DIR, show_default=True, help="The agent's --lib-dir")
@click.option("--state-dir", default=defaults.STATE_DIR, show_default=True, help="The agent's --state-dir")
@click.option("--bpf-root", default=defaults.BPFFS_ROOT, show_default=True, envvar="CILIUM_BPF_ROOT",
              help="The agent's --bpf-root")
@click.option("--plugin-socket", default=defaults.PLUGIN_SOCKET, show_default=True,
              help="The agent's --plugin-socket")
@pass_ctx
def cleanup(ctx: Context, force: bool, all_state: bool, lib_dir: str, state_dir: str, bpf_root: str,
            plugin_socket: str) -> None:
    """Remove system state installed by the agent at runtime

    tc filters, pinned BPF maps, programs and socket LB links, cilium_host, endpoint links and
    their routes, CILIUM_* iptables chains and the run state; with
    --all-state also the persistent state. The agent must be stopped.
    """
    if os.geteuid() != 0:
        raise click.ClickException("cleanup changes links, BPF pins and iptables: run it as root")
    api_socket = ctx.client.path
    for path in (api_socket, plugin_socket):
        if _served(path):
            raise click.ClickException(f"an agent is running (it answers on {path}): stop it before cleaning up")
    lock = AgentLock([d for d in (lib_dir, state_dir) if os.path.isdir(d)])
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc} before cleaning up") from None
    except OSError as exc:
        raise click.ClickException(f"cannot take the agent's lock: {exc}") from None
    try:
        _run(force, all_state, lib_dir, state_dir, bpf_root, (api_socket, plugin_socket))
    finally:
        lock.release()


def _run(force: bool, all_state: bool, lib_dir: str, state_dir: str, bpf_root: str,
         sockets: tuple[str, ...]) -> None:
    # pyroute2 and libbpf: imported for this verb only
    from pyroute2.netlink.exceptions import NetlinkError

    from docker_cilium.datapath import cleanup as host

    try:
        traces = host.find(bpf_root)
    except (OSError, NetlinkError) as exc:
        raise click.ClickException(f"cannot list what to remove: {exc}") from None
    files = _state_files(state_dir, lib_dir, sockets, all_state)
    sections = traces.describe() + ([("run state" + (" and persistent state" if all_state else "") + "\n"
                                      + "".join(f"  {p}\n" for p in files))] if files else [])
    if not sections:
        click.echo("Nothing to clean up.")
        return
    click.echo("Warning: Destructive operation. You are about to remove:")
    for s in sections:
        click.echo(f"- {s}", nl=False)
    if not force and not _confirm():
        click.echo("Nothing removed.")
        return
    done, errors = host.remove(traces)
    # Directories the agent creates, each removed only when nothing else is left in it.
    dirs = [state_dir] + ([lib_dir] if all_state else []) + (
        [os.path.dirname(defaults.API_SOCKET)] if sockets[0] == defaults.API_SOCKET else [])
    more_done, more_errors = _remove_files(files, dirs)
    for line in done + more_done:
        click.echo(line)
    for line in errors + more_errors:
        click.echo(f"Error: {line}", err=True)
    if errors or more_errors:
        raise click.exceptions.Exit(1)
