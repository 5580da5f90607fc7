"""One agent per state: an exclusive flock held for the agent's lifetime.

A second agent would unlink the first one's live sockets, reload its BPF and
restore the same endpoints twice. The lock is taken before anything else is
touched; the kernel drops it when the process ends (even by kill -9), so a
crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os

LOCK_FILE = "cilium-agent.lock"


class AlreadyRunning(RuntimeError):
    """Another agent holds the lock (the message names it and the path)."""


class AgentLock:
    def __init__(self, directories: list[str]) -> None:
        # One lock file per distinct directory: flock on a second open of the
        # same file would block on ourselves.
        self.paths = sorted({os.path.join(os.path.realpath(d), LOCK_FILE) for d in directories})
        self._fds: list[int] = []

    def acquire(self) -> None:
        for path in self.paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                self.release()
                raise AlreadyRunning(f"another cilium-agent (pid {holder}) is running with {os.path.dirname(path)} "
                                     f"(it holds {path}): stop it first") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fds.append(fd)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
