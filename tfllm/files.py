"""Atomic file writes, shared by the dataset (manifest, prepare's restart state) and
the checkpoints (their state file and markers).

A file written here is written whole under `<path>.tmp` and then renamed over `path`, so a
reader (or a restart after a crash) sees the old file or the whole new one, never a torn write.
Goes through `tf.io.gfile`, so `gs://` paths work.
"""

from __future__ import annotations

import tensorflow as tf


def write_atomically(path: str, data: str | bytes) -> None:
    """Writes `data` (text, or bytes as they are) to `path` through `path.tmp` and a rename."""
    with tf.io.gfile.GFile(path + ".tmp", "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
