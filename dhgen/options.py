"""Options for a render, as frozen dataclasses (picklable, so they travel to child processes unchanged)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_cache_dir() -> Path:
    """Face-track cache: `$XDG_CACHE_HOME/dhgen` (default `~/.cache/dhgen`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dhgen"


@dataclass(frozen=True)
class AvatarOptions:
    still_fps: float = 25.0  # frame rate of the output when the avatar is a still image
    loop: str = "pingpong"  # how a short avatar is extended: "pingpong" (forward, backward, ...) or "loop"


@dataclass(frozen=True)
class FaceOptions:
    stride: int = 5  # run the detector on every `stride`-th avatar frame, interpolate between
    detect_width: int = 480  # frames are downscaled to at most this width before detection
    smooth: float = 0.6  # exponential smoothing of boxes across detections (0 = none, towards 1 = heavy)
    cache_dir: Path = field(default_factory=default_cache_dir)  # where face tracks are cached


@dataclass(frozen=True)
class EncodeOptions:
    preset: str = "veryfast"  # libx264 preset
    crf: int = 20  # libx264 constant rate factor (lower = better quality, bigger file)
    threads: int = 0  # x264 threads; 0 lets the encoder choose
    audio_bitrate: int = 128_000  # AAC bit rate, bits/s


@dataclass(frozen=True)
class ModelOptions:
    name: str = "mouthwarp"  # "mouthwarp" (embedded, no weights) or "wav2lip"
    checkpoint: Path | None = None  # weights for models that need them
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int | None = None  # face crops per forward pass; None: 128 on CUDA, 16 on the CPU
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # wav2lip face box padding: top, bottom, left, right

    def batch_for(self, device: str) -> int:
        """The batch size on `device` ("cpu", "cuda:0", ...)."""
        return self.batch_size or (128 if str(device).startswith("cuda") else 16)


@dataclass(frozen=True)
class RenderOptions:
    avatar: AvatarOptions = field(default_factory=AvatarOptions)
    face: FaceOptions = field(default_factory=FaceOptions)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    model: ModelOptions = field(default_factory=ModelOptions)


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path = Path("renders")  # outputs land here unless a job names its own path
    log_path: Path | None = None  # result log; default out_dir/results.jsonl
    resume: bool = False  # skip jobs already rendered from the same inputs
    jobs: int = 2  # jobs at once (on Ray: per node)
    workers: int | None = None  # inference workers; None: one per visible GPU, else one CPU worker
    retries: int = 2  # extra attempts for retryable failures
    stall_timeout: float = 60.0  # seconds without progress, while work is pending, before a stage is Stalled
    startup_timeout: float = 300.0  # allowance for model loading and first CUDA use
    job_timeout: float | None = None  # seconds one attempt of a job may take (None: no limit)
    backoff_s: float = 1.0  # first retry delay; doubles each attempt, with jitter
    executor: str = "local"  # "local" (this machine's processes) or "ray" (a Ray cluster)
    ray_address: str | None = None  # what ray.init(address=...) takes; None: RAY_ADDRESS, else a private local Ray
    ray_shared_fs: bool = False  # every Ray node sees the same paths: nodes read inputs and write outputs directly

    @property
    def results_path(self) -> Path:
        return self.log_path or self.out_dir / "results.jsonl"


def job_options(options: RenderOptions, job) -> RenderOptions:
    """The options `job` renders with: the run's options, with the job's own manifest settings on top.
    Every executor renders a job with these."""
    return options
