"""Output-folder locks: shards of one batch side by side, one process per shard, whole-folder runs alone.

flock locks belong to open files, so two RunLocks in this one process conflict exactly as two processes would
(test_shards.py does it again with real `dhgen render --shard` processes).
"""

from __future__ import annotations

import os

import pytest

from dhgen.errors import RunLocked
from dhgen.locks import RunLock
from dhgen.shards import Shard


def refused(out, shard=None) -> str:
    with pytest.raises(RunLocked) as info, RunLock(out, shard):
        pass
    assert info.value.hint
    return info.value.message


def test_shards_of_one_batch_hold_the_folder_together(tmp_path):
    with RunLock(tmp_path, Shard(0, 4)), RunLock(tmp_path, Shard(1, 4)), RunLock(tmp_path, Shard(3, 4)):
        assert f"pid {os.getpid()}" in refused(tmp_path, Shard(1, 4))  # the same shard twice: refused
        message = refused(tmp_path)  # a whole-folder run: refused, naming the shards
        assert "0/4" in message and "1/4" in message and "3/4" in message
        with RunLock(tmp_path, Shard(2, 4)):  # the last one still fits
            pass
    with RunLock(tmp_path):  # all released
        pass


def test_a_whole_folder_run_keeps_shards_out(tmp_path):
    with RunLock(tmp_path):
        message = refused(tmp_path, Shard(0, 2))
        assert f"pid {os.getpid()}" in message and "not sharded" in message
    with RunLock(tmp_path, Shard(0, 2)):
        pass


def test_another_shard_count_is_refused_while_a_batch_runs(tmp_path):
    with RunLock(tmp_path, Shard(0, 4)):
        message = refused(tmp_path, Shard(0, 2))  # shard 0/2 holds jobs of shards 0/4 and 2/4
        assert "4 shards" in message
    with RunLock(tmp_path, Shard(0, 2)):  # once that batch is done, a new split may start
        pass


def test_lock_files_name_their_holder_only_while_held(tmp_path):
    with RunLock(tmp_path, Shard(1, 2)):
        assert (tmp_path / ".dhgen.shard-1-of-2.lock").read_text().split()[0] == str(os.getpid())
    assert (tmp_path / ".dhgen.shard-1-of-2.lock").read_text() == ""
    with RunLock(tmp_path):
        assert (tmp_path / ".dhgen.lock").read_text().split()[0] == str(os.getpid())
