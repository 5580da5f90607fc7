"""The embedded store's files: directory 0700, database and -wal/-shm 0600, always.

They hold every identity and address of the node; another local user must
neither read nor rewrite them, whatever the umask or an older run left.
"""

from __future__ import annotations

import os
import stat

import pytest

from docker_cilium.kvstore import KVStoreError
from docker_cilium.kvstore.sqlite import SQLiteBackend


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def _use(path: str) -> None:
    b = SQLiteBackend(path)
    await b.connect()
    try:
        await b.put("k", b"v")  # makes SQLite create -wal and -shm
        assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
        for f in (path, path + "-wal", path + "-shm"):
            assert _mode(f) == 0o600, f"{f} is {oct(_mode(f))}"
        assert _mode(os.path.dirname(path)) == 0o700
    finally:
        await b.close()


async def test_new_store_private_under_permissive_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        await _use(str(tmp_path / "lib" / "kvstore.db"))
    finally:
        os.umask(old)


async def test_existing_loose_directory_and_files_are_tightened(tmp_path) -> None:
    d = tmp_path / "lib"
    d.mkdir()
    path = str(d / "kvstore.db")
    b = SQLiteBackend(path)
    await b.connect()
    await b.put("k", b"v")
    await b.close()
    os.chmod(d, 0o755)
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.chmod(f, 0o644)
    await _use(path)


async def test_shared_sticky_directory_refused(tmp_path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    with pytest.raises(KVStoreError, match="sticky"):
        await _use(str(d / "kvstore.db"))
    assert _mode(d) == 0o1777, "a shared directory must not be chmod'ed"
