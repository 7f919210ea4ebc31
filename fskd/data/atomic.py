"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed over the target,
so that a reader sees the old file or the new one, never part of one, even if the writer is killed.

The temporary file is ``.<name>.partial-<host>-<pid>``; host and pid tell whether its writer is still alive, so
that the next write into the same folder deletes the leftovers of writers that died (`remove_stale_partials`).
Checkpoints (`fskd.models.loading.atomic_torch_save`) and the positives table (`fskd.data.positives`) use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: ``.<name>.partial-<host>-<pid>`` (``.<name>.partial-<pid>`` before the host was recorded).
PARTIAL_NAME = re.compile(r"^\..+\.partial-(?:(?P<host>.+)-)?(?P<pid>\d+)$")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (unknown counts as alive, so its files are kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True  # cannot tell: keep its file
    return True


def written_by_dead_process(host: str | None, pid: int) -> bool:
    """A file stamped with ``host`` and ``pid`` was left by a process of this host that no longer exists
    (``host`` None: stamped before hosts were recorded, taken as this host). Other hosts' files never count
    as dead: their processes cannot be checked from here."""
    return host in (None, socket.gethostname()) and not process_alive(pid)


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of `atomic_write` in ``folder`` whose writer is dead: written on this host
    (or before the host was recorded) by a process id that no longer exists, i.e. a write killed midway. Files
    of live processes and of other hosts (a shared filesystem) are left alone. Returns the files removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = PARTIAL_NAME.match(entry.name)
        if match is None or not written_by_dead_process(match["host"], int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], what: str = "file",
                 hint: str = "the previous file, if any, is unchanged") -> Path:
    """Call ``write(stream)`` on a temporary file next to ``path``, fsync it, rename it over ``path`` and fsync
    the folder (best effort). An error leaves no temporary file and is raised as ``OSError`` naming the target,
    ``what`` it is and the ``hint``. Returns the target."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    partial = target.with_name(f".{target.name}.partial-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(partial, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        if isinstance(error, (OSError, RuntimeError)):
            raise OSError(f"{target}: could not write the {what} ({error}); {hint}") from error
        raise
    # Make the rename itself durable (not every filesystem can fsync a directory).
    with contextlib.suppress(OSError):
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return target
