"""File modes of the embedded store: directory 0700, database and -wal/-shm 0600.

The store holds every identity and address of the node; other local users
must neither read nor rewrite it, whatever the umask or an older, looser
run left behind.
"""

from __future__ import annotations

import os
import stat


def private_directory(d: str) -> None:
    """Create ``d`` 0700 or tighten it to 0700: the agent's lib and state
    directories may pre-exist 0755 (``mkdir -p`` by an installer). A shared
    sticky directory such as /tmp, or one another user owns, is refused
    (OSError) rather than chmod'ed."""
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_mode & stat.S_ISVTX:
        raise OSError(f"directory {d} is shared (sticky bit): keep the agent's state in a private directory")
    if st.st_uid != os.geteuid():
        raise OSError(f"directory {d} is owned by uid {st.st_uid}, not by this agent (uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700)


def secure_store_files(path: str) -> None:
    """Make ``path``'s directory and files private before SQLite opens them.

    SQLite creates -wal and -shm with the database file's mode, so creating
    that file 0600 first covers them; existing ones are tightened. The
    directory: :func:`private_directory`.
    """
    private_directory(os.path.dirname(os.path.abspath(path)))
    os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600))
    for f in (path, path + "-wal", path + "-shm"):
        try:
            if stat.S_IMODE(os.stat(f).st_mode) != 0o600:
                os.chmod(f, 0o600)
        except FileNotFoundError:
            pass
