"""The service's own options (`dhgen serve`), beside render's `RenderOptions` and `RunOptions`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8383  # HeyGem's, so its clients need no change of address


@dataclass(frozen=True)
class ServiceOptions:
    state: Path  # the job store (SQLite), outputs and uploads live here
    host: str = "127.0.0.1"  # where to listen; anything but loopback needs a token
    port: int = DEFAULT_PORT
    token: str | None = None  # Bearer token every endpoint but /healthz asks for (--token or DHGEN_TOKEN)
    input_root: Path | None = None  # input paths must lie under it; None: only uploads are accepted
    max_queue: int = 1000  # jobs queued or running at once; a submit beyond gets 429
    max_upload: int = 2 << 30  # bytes of one multipart submit (audio + avatar); beyond: 413
    drain_timeout: float = 60.0  # after SIGTERM, seconds running jobs get to finish before they are re-queued

    @property
    def store_path(self) -> Path:
        return self.state / "jobs.sqlite3"

    @property
    def out_dir(self) -> Path:
        return self.state / "outputs"

    @property
    def uploads_dir(self) -> Path:
        return self.state / "uploads"
