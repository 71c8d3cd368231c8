"""One writer per directory: a lock file holding the PID and host of the process that writes.

Two processes writing one directory (training into a workdir, prepare into a dataset) would
interleave their files and delete each other's. The lock is created with O_CREAT | O_EXCL, so
exactly one of two racing processes gets it. A lock left by a process that died on this host
is taken over (and logged); a lock held by a live process, or by any process on another host,
is refused with a message naming it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from tfllm.errors import TfllmError

logger = logging.getLogger(__name__)


class DirectoryLock:
    """A context manager holding `<directory>/<name>` while one process writes there.

    Args:
        directory: a local directory (created if missing); remote (`gs://`) ones are not
            locked, since object stores have no exclusive create: that is logged.
        name: the lock file's name.
        kind: what the directory is, for messages ("workdir", "dataset").
        work: what the process does there, for messages ("training", "prepare").
    """

    def __init__(self, directory: str, name: str, kind: str, work: str):
        self.path = os.path.join(directory, name)
        self.remote = "://" in directory
        self.kind, self.work = kind, work
        self.held = False

    def __enter__(self) -> DirectoryLock:
        if self.remote:
            logger.warning(
                f"{self.kind} lock: not supported on {self.path}; let one job write there"
            )
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):  # at most one stale-lock takeover, then one more try
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_owner(), f)
            self.held = True
            return self
        raise TfllmError(f"cannot take the {self.kind} lock {self.path}")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def _take_over_if_stale(self) -> None:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released between our create and our read: just try again
        except (ValueError, KeyError, TypeError):
            # A kill between create and write leaves an empty lock; nobody can own it.
            logger.warning(f"{self.kind} lock: {self.path} is unreadable; taking it over")
            os.remove(self.path)
            return
        if host == socket.gethostname() and not _alive(pid):
            logger.warning(
                f"{self.kind} lock: taking over {self.path} from dead process {pid} on {host}"
            )
            os.remove(self.path)
            return
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
        raise TfllmError(
            f"{self.kind} {os.path.dirname(self.path)} is in use by process {pid} on {host} "
            f"(since {since}); one {self.work} process per {self.kind}. If that process is "
            f"gone, delete {self.path}"
        )


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
