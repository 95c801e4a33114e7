"""Locks on the output folder: one run at a time, or one process per shard with all shards of a batch at once.

    unsharded run:   .dhgen.lock exclusive
    shard K of N:    .dhgen.lock shared + .dhgen.shards-of-N.lock shared + .dhgen.shard-K-of-N.lock exclusive

So shards of one batch run side by side, a second process on the same shard is refused, an unsharded run and a
sharded one never overlap, and a batch split into another number of shards is refused while one runs (its
shards would hold some of the same jobs). Each lock is a `flock` (the kernel drops it when the process ends,
however it ends, so no lock goes stale); a file holds its exclusive owner's pid and host, for the message.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from pathlib import Path

from dhgen.errors import OutputError, RunLocked
from dhgen.shards import Shard

MAIN_LOCK = ".dhgen.lock"
TRIES, RETRY_S = 3, 0.05  # a probe by another starting run holds a lock for microseconds; a run holds it for long

SHARD_HINT = "each shard runs in one process at a time; the other shards may run alongside it"
COUNT_HINT = "shards of one batch must all use the same N in --shard K/N; wait for the other batch to finish"
_COUNT_LOCK = re.compile(r"\.dhgen\.shards-of-(\d+)\.lock")
_SHARD_LOCK = re.compile(r"\.dhgen\.shard-(\d+)-of-(\d+)\.lock")


class RunLock:
    """The output folder's lock for a run (`shard` None: the whole folder); RunLocked when it is taken."""

    def __init__(self, out_dir: Path, shard: Shard | None = None) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / MAIN_LOCK
        self.shard = shard
        self._fds: list[int] = []
        self._owned: int | None = None  # the lock file this process holds exclusively (it holds our pid)

    def __enter__(self) -> RunLock:
        try:
            self._take()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._release()

    def _take(self) -> None:
        if self.shard is None:
            self._own(self._lock(self.path, fcntl.LOCK_EX, self._refusal_for_whole_folder))
            return
        self._lock(self.path, fcntl.LOCK_SH, self._refusal_by_whole_run)
        self._lock(self.dir / _count_lock(self.shard.count), fcntl.LOCK_SH, self._refusal_by_other_count)
        self._check_no_other_count()
        self._own(self._lock(self.dir / _shard_lock(self.shard), fcntl.LOCK_EX, self._refusal_by_same_shard))

    def _own(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._owned = fd

    def _lock(self, path: Path, mode: int, refusal) -> int:
        fd = _open(path)
        if not _try_flock(fd, mode):
            owner = _owner(fd)
            os.close(fd)
            raise refusal(owner)
        self._fds.append(fd)
        return fd

    def _check_no_other_count(self) -> None:
        for path in sorted(self.dir.glob(".dhgen.shards-of-*.lock")):
            match = _COUNT_LOCK.fullmatch(path.name)
            if match and int(match.group(1)) != self.shard.count and _held(path):
                raise RunLocked(
                    f"a batch split into {match.group(1)} shards is rendering into {self.dir}; "
                    f"this run is shard {self.shard} of a split into {self.shard.count}",
                    path=self.dir,
                    hint=COUNT_HINT,
                )

    def _refusal_for_whole_folder(self, owner: str) -> RunLocked:
        shards = _running_shards(self.dir)
        if shards:
            who = ", ".join(f"shard {shard} ({owner})" for shard, owner in shards)
            return RunLocked(f"shard runs are rendering into {self.dir}: {who}", path=self.dir)
        return RunLocked(f"another dhgen run ({owner}) is rendering into {self.dir}", path=self.dir)

    def _refusal_by_whole_run(self, owner: str) -> RunLocked:
        return RunLocked(f"another dhgen run ({owner}, not sharded) is rendering into {self.dir}", path=self.dir)

    def _refusal_by_other_count(self, owner: str) -> RunLocked:
        return RunLocked(
            f"a batch split into another number of shards is starting in {self.dir}", path=self.dir, hint=COUNT_HINT
        )

    def _refusal_by_same_shard(self, owner: str) -> RunLocked:
        return RunLocked(
            f"shard {self.shard} is already being rendered into {self.dir} by another process ({owner})",
            path=self.dir,
            hint=SHARD_HINT,
        )

    def _release(self) -> None:
        if self._owned is not None:
            os.ftruncate(self._owned, 0)  # an empty lock file: nobody holds it
            self._owned = None
        while self._fds:
            os.close(self._fds.pop())


def _count_lock(count: int) -> str:
    return f".dhgen.shards-of-{count}.lock"


def _shard_lock(shard: Shard) -> str:
    return f".dhgen.{shard.name}.lock"


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot use the output folder: {exc.strerror or exc}", path=path.parent) from exc


def _try_flock(fd: int, mode: int, tries: int = TRIES) -> bool:
    for attempt in range(tries):
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(RETRY_S)
    return False


def _held(path: Path) -> bool:
    """Whether some process holds a lock on `path` (probed with a momentary exclusive lock, closed at once)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        return not _try_flock(fd, fcntl.LOCK_EX, tries=2)
    finally:
        os.close(fd)


def _running_shards(out_dir: Path) -> list[tuple[str, str]]:
    """(shard, owner) of every shard lock held in the folder, for the message of a refused unsharded run."""
    held = []
    for path in sorted(out_dir.glob(".dhgen.shard-*-of-*.lock")):
        match = _SHARD_LOCK.fullmatch(path.name)
        if match and _held(path):
            held.append((f"{match.group(1)}/{match.group(2)}", _owner_of(path)))
    return held


def _owner(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode(errors="replace").split()
    if not text:
        return "pid unknown"
    return f"pid {text[0]}" + (f" on {text[1]}" if len(text) > 1 and text[1] != socket.gethostname() else "")


def _owner_of(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "pid unknown"
    try:
        return _owner(fd)
    finally:
        os.close(fd)
