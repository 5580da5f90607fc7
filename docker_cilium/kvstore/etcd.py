"""etcd v3 backend (gRPC, via aetcd), for clusters of agents sharing state.

Cilium's etcd usage is mirrored: one *session lease* per agent, kept alive
by a background task; keys written with ``lease=True`` (per-node identity
references, locks) vanish when the agent dies.  Atomic operations are etcd
transactions comparing on ``version == 0`` (absent) or on the value.

aetcd talks to a single ``host:port``; with several endpoints we try them in
order at connect time and stay on the first that answers (no mid-session
failover, which a single-node test etcd does not need).

TLS and username/password come from Cilium's etcd config file (see
etcd_config.py).  aetcd 1.0 only opens plaintext channels, so ``_Client``
opens a TLS one itself; an ``https://`` endpoint without TLS settings is
refused, never downgraded.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import aetcd
import aetcd.client
import aetcd.exceptions
import aetcd.rpc
import aetcd.rtypes
import grpc
import structlog

from .backend import Backend, Event, EventType, KVStoreError
from .etcd_config import EtcdConfig, EtcdConfigError, split_endpoints

log = structlog.get_logger(__name__)

T = TypeVar("T")

RPC_TIMEOUT_S = 10
#: seconds a client close may take before it is abandoned
CLOSE_TIMEOUT_S = 5.0


class LeaseNotFound(KVStoreError):
    """etcd no longer knows the lease a write names (expired while we were cut off).

    Recognised by its gRPC status, NOT_FOUND, which etcd's KV and transaction
    calls return for nothing else (``ErrGRPCLeaseNotFound``)."""


def _grpc_code(e: BaseException) -> aetcd.rpc.StatusCode | None:
    """The gRPC status behind an aetcd error (aetcd chains the AioRpcError as cause)."""
    cause = e.__cause__
    return cause.code() if isinstance(cause, aetcd.rpc.AioRpcError) else None


def _b(s: str) -> bytes:
    return s.encode("utf-8")


def _split_endpoint(ep: str) -> tuple[str, int]:
    ep = ep.strip()
    for scheme in ("http://", "https://"):
        if ep.startswith(scheme):
            ep = ep[len(scheme):]
    ep = ep.rstrip("/")
    if ep.startswith("["):  # [ipv6]:port
        host, _, port = ep[1:].partition("]:")
        return host, int(port or 2379)
    host, sep, port = ep.rpartition(":")
    if not sep:
        return ep, 2379
    return host, int(port)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _credentials(config: EtcdConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials from the config's files (None: plaintext)."""
    if not config.tls:
        return None
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(config.ca_file),
            private_key=_read(config.key_file),
            certificate_chain=_read(config.cert_file),
        )
    except OSError as e:
        raise EtcdConfigError(f"etcd TLS files: {e}") from e


class _Client(aetcd.Client):
    """aetcd's client, on a TLS channel when ``credentials`` are given.

    aetcd 1.0's connect() hard-codes an insecure channel (and would send the
    password over it), so this repeats its few lines with grpc's
    secure_channel; the stubs, watcher and auth token are aetcd's own.
    """

    def __init__(self, *, credentials: grpc.ChannelCredentials | None, **kw: Any) -> None:
        super().__init__(**kw)
        self._credentials = credentials

    @aetcd.client._handle_errors
    async def connect(self) -> None:
        if self._credentials is None:
            return await super().connect()
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = aetcd.rpc.secure_channel(target, self._credentials, options=self._options.items())
            if self._username is not None:
                await self._authenticate()
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.client.watcher.Watcher(
                aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False

    async def _authenticate(self) -> None:
        self.auth_stub = aetcd.rpc.AuthStub(self.channel)
        resp = await self.auth_stub.Authenticate(
            aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout
        )
        self.metadata = (("token", resp.token),)
        if self._watcher is not None:
            self._watcher._metadata = self.metadata

    @aetcd.client._handle_errors
    async def reauthenticate(self) -> None:
        """Get a new auth token (etcd forgets tokens on restart and after their TTL)."""
        if self._username is not None and self.channel is not None:
            await self._authenticate()


class EtcdBackend(Backend):
    """Backend on an etcd v3 cluster."""

    name = "etcd"

    def __init__(self, endpoints: list[str], lease_ttl: int = 15, *, config: EtcdConfig | None = None) -> None:
        if not endpoints:
            raise ValueError("EtcdBackend needs at least one endpoint (host:port)")
        bare, scheme_tls = split_endpoints(endpoints)
        self.config = config or EtcdConfig(endpoints=bare)
        if scheme_tls and not self.config.tls:
            raise EtcdConfigError(
                f"https etcd endpoint {', '.join(endpoints)} needs TLS settings "
                "(--kvstore-opt etcd.config=PATH with trusted-ca-file); refusing to downgrade to plaintext"
            )
        self._credentials = _credentials(self.config)
        if self.config.username is not None and not self.config.tls:
            log.warning("kvstore.etcd_auth_without_tls", endpoints=bare,
                        hint="the password and token cross the network in clear")
        self.endpoints = bare
        self.lease_ttl = int(lease_ttl)
        self.address = self.endpoints[0]
        self._client: aetcd.Client | None = None
        self._lease: Any = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._renew_lock = asyncio.Lock()
        # Highest store revision seen in any response: watch() starts right
        # after it, so "get_prefix, then watch" has no gap (Cilium's
        # list-then-watch pattern) even though creating the watch is async.
        self._revision = 0

    # ------------------------------------------------------------------ infra

    def _err(self, what: str, e: BaseException) -> KVStoreError:
        """The store error for an aetcd/gRPC failure, its class chosen by gRPC status."""
        cls = LeaseNotFound if _grpc_code(e) == aetcd.rpc.StatusCode.NOT_FOUND else KVStoreError
        return cls(f"etcd {self.address}: {what} failed: {e.__class__.__name__}: {e}")

    async def _call(self, what: str, aw: Awaitable[T]) -> T:
        try:
            return await aw
        except aetcd.exceptions.UnauthenticatedError as e:
            await self._reauthenticate()
            raise self._err(what, e) from e
        except aetcd.exceptions.ClientError as e:
            raise self._err(what, e) from e
        except (asyncio.TimeoutError, OSError) as e:
            raise self._err(what, e) from e

    async def _reauthenticate(self) -> None:
        """The token expired or etcd restarted: fetch a new one for the next calls."""
        client = self._client
        if client is None or self.config.username is None:
            return
        try:
            await client.reauthenticate()
            log.info("kvstore.reauthenticated", address=self.address, user=self.config.username)
        except aetcd.exceptions.ClientError as e:
            log.error("kvstore.reauthenticate_failed", address=self.address, error=str(e))

    @property
    def client(self) -> aetcd.Client:
        if self._client is None:
            raise KVStoreError(f"etcd {self.address}: not connected")
        return self._client

    def _seen(self, header: Any) -> None:
        rev = getattr(header, "revision", 0)
        if rev > self._revision:
            self._revision = rev

    # -------------------------------------------------------------- lifecycle

    async def connect(self) -> None:
        if self._client is not None:
            return
        errors = []
        for ep in self.endpoints:
            host, port = _split_endpoint(ep)
            client = _Client(
                host=host, port=port, timeout=RPC_TIMEOUT_S, credentials=self._credentials,
                username=self.config.username, password=self.config.password,
            )
            self.address = f"{host}:{port}"
            try:
                # aetcd's connect() does no I/O without credentials; granting
                # the session lease is the first real round-trip and proves
                # the server is up (and, with TLS, the handshake).
                lease = await self._call("connect (lease grant)", client.lease(self.lease_ttl))
            except KVStoreError as e:
                errors.append(str(e))
                await client.close()
                continue
            self._client, self._lease = client, lease
            break
        else:
            raise KVStoreError("cannot reach any etcd endpoint: " + "; ".join(errors))
        status = await self._call("status", self.client.status())
        # Learn the current revision so that a watch() before any other call
        # starts "now" rather than replaying the whole history.
        await self.get("\0revision-probe")
        log.info(
            "kvstore.connected",
            backend="etcd",
            address=self.address,
            tls=self.config.tls,
            user=self.config.username,
            server_version=status.version,
            lease=hex(self._lease.id),
            ttl=self._lease.ttl,
        )
        self._keepalive_task = asyncio.create_task(self._keepalive(), name="kvstore-etcd-keepalive")

    async def close(self) -> None:
        await self._stop_keepalive()
        client, self._client = self._client, None
        if client is not None:
            try:
                # bounded: a channel close that never returns (seen once under a
                # loaded test run) must not hang the agent's shutdown
                await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)
            except Exception as e:  # closing a broken channel must not mask the caller's error
                log.debug("kvstore.close_failed", address=self.address, error=str(e) or type(e).__name__)

    async def _keepalive(self) -> None:
        interval = max(self.lease_ttl / 3.0, 0.5)
        while True:
            await asyncio.sleep(interval)
            try:
                lease_id = self._lease.id
                reply = await self._call("lease keep-alive", self.client.refresh_lease(lease_id))
                if reply is None or reply.TTL <= 0:
                    # etcd already expired the lease (we were cut off longer
                    # than the TTL): its keys are gone; start a new session.
                    await self._renew_session(lease_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep trying: the server may come back within the TTL
                log.warning("kvstore.keepalive_failed", address=self.address, error=str(e))

    async def revoke_session(self) -> None:
        # Grant the new lease before revoking the old one: code reacting to
        # the revocation (e.g. re-putting references on the DELETE events)
        # must never see the dead lease id.
        old = self._lease
        self._lease = await self._call("lease grant", self.client.lease(self.lease_ttl))
        await self._call("lease revoke", self.client.revoke_lease(old.id))
        log.info("kvstore.session_revoked", address=self.address, old_lease=hex(old.id), new_lease=hex(self._lease.id))
        self._session_lost()

    async def _renew_session(self, dead_id: int) -> None:
        """Replace a lease etcd no longer knows (expired while we were cut off)."""
        async with self._renew_lock:
            if self._lease.id != dead_id:
                return  # another task already renewed it
            self._lease = await self._call("lease grant", self.client.lease(self.lease_ttl))
            log.error(
                "kvstore.session_lost", address=self.address, old_lease=hex(dead_id), new_lease=hex(self._lease.id)
            )
        self._session_lost()

    async def _leased(self, lease: bool, op: Callable[[int | None], Awaitable[T]]) -> T:
        """Run a write bound (or not) to the session lease; retry once on a lost lease.

        Without this, the first leased write after a session loss would fail
        until the keep-alive task notices, up to TTL/3 later.
        """
        lease_id = self._lease.id if lease else None
        try:
            return await op(lease_id)
        except LeaseNotFound:
            if not lease:
                raise
        await self._renew_session(lease_id)  # type: ignore[arg-type]
        return await op(self._lease.id)

    # ---------------------------------------------------------------- reading

    async def get(self, key: str) -> bytes | None:
        # A one-key range rather than aetcd's get(): get() returns a bare None
        # for absent keys, losing the header revision that watch() relies on.
        k = _b(key)
        r = await self._call(f"get {key}", self.client.get_range(k, k + b"\0"))
        self._seen(r.header)
        for kv in r:
            return bytes(kv.value)
        return None

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        if prefix:
            r = await self._call(f"get prefix {prefix}", self.client.get_prefix(_b(prefix)))
        else:
            # An empty prefix means "everything": range [\0, \0) in etcd terms.
            r = await self._call("get all", self.client.get_range(b"\0", b"\0"))
        self._seen(r.header)
        return {kv.key.decode("utf-8"): bytes(kv.value) for kv in r}

    # ---------------------------------------------------------------- writing

    async def put(self, key: str, value: bytes, *, lease: bool = False) -> None:
        r = await self._leased(
            lease, lambda lid: self._call(f"put {key}", self.client.put(_b(key), bytes(value), lease=lid))
        )
        self._seen(r.header)

    async def delete(self, key: str) -> bool:
        # delete_range for the same reason as in get(): always a header.
        k = _b(key)
        r = await self._call(f"delete {key}", self.client.delete_range(k, k + b"\0"))
        self._seen(r.header)
        return r.deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        if prefix:
            r = await self._call(f"delete prefix {prefix}", self.client.delete_prefix(_b(prefix)))
        else:
            r = await self._call("delete all", self.client.delete_range(b"\0", b"\0"))
        self._seen(r.header)
        return int(r.deleted)

    async def _txn(self, what: str, compare: list[Any], success: list[Any]) -> bool:
        ok, _ = await self._call(what, self.client.transaction(compare=compare, success=success, failure=[]))
        return bool(ok)

    async def _put_txn(self, what: str, key: str, value: bytes, lease: bool, compare: Callable[[], list[Any]]) -> bool:
        t = self.client.transactions
        k = _b(key)
        return await self._leased(
            lease, lambda lid: self._txn(what, compare(), [t.put(k, bytes(value), lease=lid)])
        )

    async def create_only(self, key: str, value: bytes, *, lease: bool = False) -> bool:
        t = self.client.transactions
        k = _b(key)
        return await self._put_txn(f"create {key}", key, value, lease, lambda: [t.version(k) == 0])

    async def compare_and_swap(
        self, key: str, expected: bytes | None, value: bytes, *, lease: bool = False
    ) -> bool:
        if expected is None:
            return await self.create_only(key, value, lease=lease)
        t = self.client.transactions
        k = _b(key)
        # Value comparison alone would treat an absent key like b"": also
        # require that the key exists.
        exp = bytes(expected)
        return await self._put_txn(
            f"compare-and-swap {key}", key, value, lease, lambda: [t.version(k) > 0, t.value(k) == exp]
        )

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        t = self.client.transactions
        k = _b(key)
        return await self._txn(
            f"compare-and-delete {key}",
            [t.version(k) > 0, t.value(k) == bytes(expected)],
            [t.delete(k)],
        )

    # ------------------------------------------------------------------ watch

    def watch(self, prefix: str) -> AsyncIterator[Event]:
        # Capture the start revision synchronously: creating the etcd watch
        # is asynchronous and would otherwise miss changes made meanwhile.
        return self._watch(prefix, self._revision + 1)

    async def _watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        client = self.client
        k = _b(prefix)
        # aetcd's watch creation waits on the watcher's lock and on any other
        # pending creation with no deadline of its own: bounded here, so a
        # stalled watch stream fails the caller (which re-lists and retries)
        # instead of hanging it.
        if prefix:
            created = client.watch_prefix(k, start_revision=start_revision)
        else:
            created = client.watch(b"\0", range_end=b"\0", start_revision=start_revision)
        w = await self._call(f"watch {prefix or 'all'}", asyncio.wait_for(created, RPC_TIMEOUT_S + CLOSE_TIMEOUT_S))
        try:
            it = w.__aiter__()
            while True:
                try:
                    ev = await it.__anext__()
                except StopAsyncIteration:
                    return
                except aetcd.exceptions.ClientError as e:
                    raise self._err(f"watch {prefix}", e) from e
                except Exception as e:
                    # aetcd delivers a broken gRPC stream as the raw error.
                    raise self._err(f"watch {prefix}", e) from e
                if ev is None:  # stream shut down (client closed)
                    return
                typ = EventType.PUT if ev.kind == aetcd.rtypes.EventKind.PUT else EventType.DELETE
                if ev.kv.mod_revision > self._revision:
                    self._revision = ev.kv.mod_revision
                yield Event(
                    typ,
                    ev.kv.key.decode("utf-8"),
                    bytes(ev.kv.value) if typ is EventType.PUT else None,
                )
        finally:
            # bounded like close(): the cancel request queues behind the
            # watcher's lock, which a stalled stream can hold for good
            try:
                await asyncio.wait_for(w.cancel(), CLOSE_TIMEOUT_S)
            except Exception:
                pass
