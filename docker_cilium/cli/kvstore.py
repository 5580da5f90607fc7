"""`cilium kvstore get|set|delete`: the cluster key-value store, directly.

As Cilium's, these verbs do not go through the agent: they open the store
with the backend classes and options the agent uses (``--kvstore``,
``--kvstore-opt``, ``--lib-dir``), so they work while the agent is down.
Without ``--kvstore`` the running agent is asked for its own settings
(``GET /v1/config``); when no agent answers, the agent's defaults apply (the
embedded store in /var/lib/cilium).

A write is seen by a running agent the way another node's write would be:
the identity allocator watches ``cilium/state/identities/v1/`` (etcd watch,
or the embedded store's change log, polled every 50 ms), so a master key set
or deleted here shows up in ``cilium identity get``, and a deleted reference
of the agent's own node is written back. A master key set here that no node
references is freed by the agents' identity GC (every 30 s), as in Cilium.
Nothing else in this store is watched. The agent's node-local state (endpoints, IPAM, policy) is not in
this store: it lives in ``<lib-dir>/node-state.db``, read at start only.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any, Awaitable, Callable, TypeVar

import click

from docker_cilium import defaults
from docker_cilium.cli.common import Context, output_option, pass_ctx, show
from docker_cilium.errors import Unavailable
from docker_cilium.kvstore import KINDS, Backend, EtcdConfigError, new_backend, parse_options

T = TypeVar("T")
LOCAL_STORE_FILE = "kvstore.db"


def store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The agent's store flags, accepted after each verb (like Cilium's persistent flags)."""

    @click.option("--kvstore", "kind", type=click.Choice(KINDS), default=None,
                  help="Store kind (default: the running agent's, else local)")
    @click.option("--kvstore-opt", "opts", multiple=True,
                  help="Store options as the agent takes them, e.g. etcd.address=HOST:PORT")
    @click.option("--lib-dir", default=None,
                  help=f"The agent's --lib-dir: the local store is <lib-dir>/{LOCAL_STORE_FILE} "
                       f"(default: the running agent's, else {defaults.LIB_DIR})")
    @functools.wraps(fn)
    def wrapper(*args: Any, kind: str | None, opts: tuple[str, ...], lib_dir: str | None, **kw: Any) -> Any:
        if opts and kind is None:
            raise click.UsageError("--kvstore-opt needs --kvstore")
        return fn(*args, store=(kind, opts, lib_dir), **kw)

    return wrapper


def _settings(ctx: Context, kind: str | None, opts: tuple[str, ...],
              lib_dir: str | None) -> tuple[str, dict[str, str], str]:
    """(kind, options, lib dir): the flags, else the running agent's, else its defaults."""
    if kind is not None:
        try:
            return kind, parse_options(opts), lib_dir or defaults.LIB_DIR
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--kvstore-opt") from None
    try:
        cfg = ctx.client.get("/config")["configuration"]
    except Unavailable:
        return "local", {}, lib_dir or defaults.LIB_DIR  # no agent: its defaults
    return cfg["kvstore"], dict(cfg.get("kvstore_opts") or {}), lib_dir or cfg["lib_dir"]


def _check_local(lib_dir: str) -> None:
    """Refuse to create an empty store where the agent never kept one."""
    path = os.path.join(lib_dir, LOCAL_STORE_FILE)
    try:
        os.stat(path)
    except PermissionError:
        raise click.ClickException(f"cannot open the embedded kvstore {path}: permission denied "
                                   "(run as root)") from None
    except FileNotFoundError:
        raise click.ClickException(f"no embedded kvstore at {path}: no agent has run with --lib-dir {lib_dir} "
                                   "(pass the agent's --lib-dir, or --kvstore etcd --kvstore-opt ...)") from None


def with_store(ctx: Context, store: tuple[str | None, tuple[str, ...], str | None],
               op: Callable[[Backend], Awaitable[T]]) -> T:
    """Connect as the agent would, run ``op``, close (errors become one line)."""
    kind, options, lib_dir = _settings(ctx, *store)
    if kind == "local":
        _check_local(lib_dir)
    try:
        backend = new_backend(kind, options, lib_dir)
    except (EtcdConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None

    async def run() -> T:
        await backend.connect()  # KVStoreError (an APIError): one line from the root group
        try:
            return await op(backend)
        finally:
            await backend.close()

    return asyncio.run(run())


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="backslashreplace")


def _key(value: str) -> str:
    if not value:
        raise click.BadParameter("must not be empty", param_hint="KEY")
    return value


@click.group()
def kvstore() -> None:
    """Direct access to the kvstore"""


@kvstore.command("get")
@click.argument("key", callback=lambda c, p, v: _key(v))
@click.option("--recursive", is_flag=True, help="Every key starting with KEY")
@store_options
@output_option
@pass_ctx
def get(ctx: Context, key: str, recursive: bool, store: Any) -> None:
    """Retrieve a key (or, with --recursive, every key under a prefix)"""
    if recursive:
        found = with_store(ctx, store, lambda b: b.get_prefix(key))
    else:
        value = with_store(ctx, store, lambda b: b.get(key))
        if value is None:
            raise click.ClickException(f"key {key} is not found")
        found = {key: value}
    texts = {k: _text(v) for k, v in sorted(found.items())}
    show(ctx, texts, lambda: click.echo("".join(f"{k} => {v}\n" for k, v in texts.items()), nl=False))


@kvstore.command("set")
@click.option("--key", required=True, callback=lambda c, p, v: _key(v), help="Key")
@click.option("--value", required=True, help="Value (stored as UTF-8 bytes)")
@store_options
@pass_ctx
def set_(ctx: Context, key: str, value: str, store: Any) -> None:
    """Set a key and value (no lease: it stays until deleted)"""
    with_store(ctx, store, lambda b: b.put(key, value.encode()))


@kvstore.command("delete")
@click.argument("key", callback=lambda c, p, v: _key(v))
@click.option("--recursive", is_flag=True, help="Every key starting with KEY")
@store_options
@pass_ctx
def delete(ctx: Context, key: str, recursive: bool, store: Any) -> None:
    """Delete a key (or, with --recursive, every key under a prefix)"""
    if recursive:
        n = with_store(ctx, store, lambda b: b.delete_prefix(key))
        click.echo(f"Deleted {n} key(s) under {key}")
    elif not with_store(ctx, store, lambda b: b.delete(key)):
        raise click.ClickException(f"key {key} is not found")
