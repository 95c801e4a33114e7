"""Running the service: uvicorn in this process, over `create_app(Service(...))`, with dhgen's own way to stop.

SIGTERM (or SIGINT) stops taking jobs (submits get 503), gives the running ones `--drain-timeout` seconds, then
stops the executor (what still runs is queued again for the next start), ends the event streams, and uvicorn
exits; the process exits 0. A second signal skips the rest of the wait. The listening socket is bound before
uvicorn starts, so a port in use is a UsageError (exit 2) and `--port 0` takes a free port.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import uvicorn

from dhgen.errors import UsageError
from dhgen.options import RenderOptions, RunOptions
from dhgen.service.app import Service, create_app
from dhgen.service.options import ServiceOptions

log = logging.getLogger(__name__)

GRACEFUL_S = 5.0  # uvicorn's wait for open connections once the executor has stopped


def serve(
    options: ServiceOptions,
    render: RenderOptions,
    run: RunOptions,
    on_listening: Callable[[str, int], None] = lambda host, port: None,
) -> None:
    """Serve until stopped by a signal. UsageError for bad options or an address that cannot be bound, RunLocked
    when another server holds the state folder."""
    with Service(options, render, run) as service, _listen(options.host, options.port) as sock:
        config = uvicorn.Config(
            create_app(service), log_config=None, lifespan="on", timeout_graceful_shutdown=GRACEFUL_S
        )
        server = _Server(config, service, options.drain_timeout)
        on_listening(*sock.getsockname()[:2])
        server.run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="pick a free --port (0: any free one), or stop what listens there",
        ) from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server with dhgen's stop (see the module docstring); uvicorn's own would stop at once and raise
    the signal again after its shutdown, so the process would end by SIGTERM rather than with 0."""

    def __init__(self, config: uvicorn.Config, service: Service, drain_timeout: float) -> None:
        super().__init__(config)
        self.service, self.drain_timeout = service, drain_timeout
        self.stopping: threading.Thread | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.stopping is None:
            log.warning("signal %d: no new jobs; %gs for the running ones, then stopping", sig, self.drain_timeout)
            self.stopping = threading.Thread(target=self._drain_and_exit, name="dhgen-drain", daemon=True)
            self.stopping.start()
        else:
            self.service.engine.stop_now()

    def _drain_and_exit(self) -> None:
        self.service.engine.drain(self.drain_timeout)
        self.service.engine.stop()
        self.should_exit = True
