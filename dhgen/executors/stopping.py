"""SIGINT/SIGTERM while an executor runs: the first signal is remembered and the executor's loop raises
`Interrupted` at its next turn (it then stops what it started, and the CLI exits 128+signum); a second SIGINT
means "now": `kill_now()` runs and the process exits 130 at once.

Handlers are installed only in the main thread of the main process (elsewhere Python refuses them), and the
previous ones are put back afterwards.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable

from dhgen.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self, kill_now: Callable[[], None]) -> None:
        self._kill_now = kill_now
        self._previous: dict = {}
        self.signum: int | None = None

    def __enter__(self) -> StopSignals:
        if mp.current_process().name == "MainProcess" and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in SIGNALS}
            for s in SIGNALS:
                signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def check(self) -> None:
        """Raise Interrupted once a signal came."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            self._kill_now()
            os._exit(130)
        self.signum = signum
