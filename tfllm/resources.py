"""Out of disk space or memory: a user's problem, told in one line, with the temp files gone.

A full disk surfaces as Python's `OSError` (ENOSPC, EDQUOT, or EFBIG past a file-size limit)
or as one of TensorFlow's `OpError`s whose message carries the system's text, and a failed
allocation as `MemoryError` or TF's `ResourceExhaustedError`. `guarded` turns any of them,
raised while a command writes something, into a `ResourceError` naming what was being written,
where, and what was kept intact, after removing the write's temporary files. The data written
before is safe by construction (every file is written under a temporary name and renamed):
the message says so, so the user knows what to keep.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import logging
import posixpath
import shutil
from collections.abc import Callable, Iterable, Iterator

from tfllm.errors import TfllmError

logger = logging.getLogger(__name__)

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "file too large")


class ResourceError(TfllmError):
    """The disk or the memory ran out while a command worked; nothing half-written is left."""


def out_of_space(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, says that the disk (or a quota, or a
    file-size limit) is full."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
        text = str(err).lower()
        # Apache Beam re-raises a step's error as a RuntimeError whose text starts with the
        # original's type, e.g. "tensorflow.python.framework.errors_impl.OutOfRangeError: ...".
        told = type(err).__module__.startswith("tensorflow") or text.startswith(
            ("tensorflow.", "oserror:")
        )
        if told and any(t in text for t in _NO_SPACE_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    return type(err).__name__ == "ResourceExhaustedError" and not out_of_space(err)


def remove_temporaries(directory: str, patterns: Iterable[str]) -> list[str]:
    """Removes the files and directories of `directory` whose names match `patterns`."""
    import tensorflow as tf

    removed = []
    if not tf.io.gfile.isdir(directory):
        return removed
    for name in tf.io.gfile.listdir(directory):
        name = name.rstrip("/")
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            path = posixpath.join(directory, name)
            try:
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
                removed.append(name)
            except Exception as err:  # noqa: BLE001 - cleanup must not hide the real error
                logger.warning("could not remove %s: %s", path, err)
    return removed


@contextlib.contextmanager
def guarded(
    what: str,
    path: str,
    kept: str | Callable[[], str] = "",
    cleanup: Callable[[], object] | None = None,
) -> Iterator[None]:
    """Runs the body; a full disk or exhausted memory in it becomes one ResourceError line.

    Args:
        what: what was being written ("checkpoint ckpt-40", "the dataset's shards").
        path: where.
        kept: what is intact, or a function saying it (called only after a failure).
        cleanup: removes the write's temporary files (called only after a failure).
    """
    try:
        yield
    except Exception as err:
        space, memory = out_of_space(err), out_of_memory(err)
        if not (space or memory):
            raise
        if cleanup is not None:
            cleanup()
        intact = kept() if callable(kept) else kept
        cause = "out of disk space" if space else "out of memory"
        detail = "free some space" if space else "use smaller settings or a larger machine"
        raise ResourceError(
            f"{cause} while writing {what} to {path}; temporary files removed"
            + (f"; kept intact: {intact}" if intact else "")
            + f" ({detail} and run the command again)"
        ) from None


def remove_tree(path: str) -> None:
    """Removes a local or gfile directory tree, ignoring one that is already gone."""
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)
        return
    import tensorflow as tf

    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
