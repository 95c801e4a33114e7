"""A child's pipe, read and written by two small threads so the supervisor never blocks on a child.

A stopped (SIGSTOP) or dying child can leave a message half sent or a pipe full; `Connection.recv`/`send`
would then block the supervisor. Here a reader thread turns each message into an inbox entry and pokes a
wake-up pipe that the supervisor's `wait()` watches beside every child's sentinel; a writer thread sends from an
outbox. A channel whose child died is closed and never reused.
"""

from __future__ import annotations

import os
import queue
import threading
from multiprocessing.connection import Connection

EOF_MESSAGE = ("eof",)


class Inbox:
    """Messages from all children, (key, message), plus the wake-up pipe's read end to wait on."""

    def __init__(self) -> None:
        self.messages: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self._wake_w, False)

    def put(self, key, message) -> None:
        self.messages.put((key, message))
        self.wake()

    def wake(self) -> None:
        """Make the supervisor's `wait()` return (from any thread)."""
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:  # the pipe is full of pokes already: the loop is awake anyway
            pass

    def drain(self) -> list:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        items = []
        while True:
            try:
                items.append(self.messages.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self._wake_w)


class Channel:
    def __init__(self, key, conn: Connection, inbox: Inbox) -> None:
        self.key, self.conn, self._inbox = key, conn, inbox
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"read-{key}", daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"write-{key}", daemon=True)
        self._reader.start()
        self._writer.start()

    def send(self, message) -> None:
        self._outbox.put(message)

    def wait_eof(self, timeout: float) -> None:
        """After the child died: give the reader a moment to deliver what the child wrote before dying."""
        self._reader.join(timeout)

    def close(self) -> None:
        """Stop the writer; close the pipe once the reader has seen EOF (never under a blocked reader: its file
        descriptor could be reused by another file). The child is dead or stopping when this is called."""
        self._outbox.put(None)
        self._reader.join(1.0)
        if self._reader.is_alive():
            return  # leave it to the process exit
        try:
            self.conn.close()
        except OSError:
            pass

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except Exception:  # noqa: BLE001 - EOF, or a pipe torn down mid-message: either way the child is gone
                self._inbox.put(self.key, EOF_MESSAGE)
                return
            self._inbox.put(self.key, message)

    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self.conn.send(message)
            except (OSError, ValueError, TypeError):  # closed under us (TypeError: handle already None)
                return
