"""Files replaced whole: a temp file beside the target, fsync, rename over it, fsync the folder. A reader (or a
crash, or a kill) then finds the old file or the new one, never half of one. Used for the metrics file, written
manifests, face-cache entries and outputs rendered elsewhere (Ray); `dhgen.writer.VideoWriter` streams into its
own temp file and ends the same way (`fsync_file`, `fsync_folder`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_serial = itertools.count()


def replace_atomically(target: Path, data: bytes, temp: Path | None = None) -> None:
    """Make `target` hold `data`, whole or not at all; `temp` (default: a hidden name beside it, unique to this
    process) is removed on failure. Raises OSError (a missing folder included: callers create theirs)."""
    target = Path(target)
    temp = temp or target.with_name(f".{target.name}.{os.getpid()}.{next(_serial)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)  # the umask applies
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_folder(target.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename durable. Some filesystems refuse fsync on a folder; the file is already in place."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.debug("cannot open %s to fsync it: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("fsync of folder %s failed: %s", folder, exc)
    finally:
        os.close(fd)
