"""Events to every listener of `GET /v1/events`: the executor's thread publishes, each listener has a bounded queue
on the server's event loop. A listener that falls too far behind is dropped (its stream ends; it reconnects)."""

from __future__ import annotations

import asyncio
import threading

QUEUE_SIZE = 1000  # events a listener may be behind before it is dropped
END = None  # put into a queue: the stream ends


class Hub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: set[asyncio.Queue] = set()
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server's loop (at start-up): events are handed to it."""
        self._loop = loop

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        with self._lock:
            self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._queues.discard(queue)

    def publish(self, event: dict | None) -> None:
        """From any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self.publish(END)

    def _put(self, event: dict | None) -> None:
        with self._lock:
            queues = list(self._queues)
        for queue in queues:
            if queue.full():
                self.unsubscribe(queue)
                queue.get_nowait()
                queue.put_nowait(END)
            else:
                queue.put_nowait(event)
