"""Options for a render, as frozen dataclasses (picklable, so they travel to child processes unchanged)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dhgen.encoders import after_failures
from dhgen.shards import Shard, shard_path

LOOP_MODES = ("pingpong", "loop")
PRECISIONS = ("auto", "fp16", "fp32")
FACE_CHOICES = ("auto", "largest", "center", "left", "right")  # besides N (the Nth from the left) and x,y (a pixel)
FACE_CHOICE_HINT = (
    "face is auto (the surest), largest, center, left, right, N (the Nth face from the left, 0 first) or x,y (a pixel "
    "inside the face, in the first frame with faces)"
)


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
    choice: str = "auto"  # which face is animated where there are several (FACE_CHOICES, N or x,y; see face_choice)
    min_coverage: float = 0.0  # a job whose face is in a smaller share of its frames fails with NoFaceError (0: off)


@dataclass(frozen=True)
class EncodeOptions:
    encoder: str = "auto"  # auto (NVENC if it opens here, else libx264/libx265) or an FFmpeg encoder name
    codec: str | None = None  # h264 | hevc; None: the named encoder's codec, h264 for auto
    preset: str = "veryfast"  # on x264's scale, mapped per encoder (dhgen.encoders)
    crf: int = 20  # quality on x264's CRF scale (lower = better quality, bigger file), mapped per encoder
    threads: int = 0  # encoder threads; 0 lets the encoder choose
    audio_bitrate: int = 128_000  # AAC bit rate, bits/s
    encoder_reason: str = ""  # why this encoder (set by dhgen.encoders when it resolves `auto` or falls back)
    resolved_from: str = ""  # what --encoder said before it was resolved ("auto": a Ray node decides again for itself)
    gpu: int | None = None  # NVENC: the CUDA device it encodes on (spreads jobs over GPUs); None: the first


@dataclass(frozen=True)
class ModelOptions:
    name: str = "mouthwarp"  # a registered model family (`dhgen models`); mouthwarp is embedded, needs no weights
    checkpoint: Path | None = None  # weights for models that need them (a file or a folder, as the family says)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on a GPU, fp32 on the CPU) | fp16 | fp32
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
    verify: bool = False  # with resume: render again what would be skipped, and report frames_digest mismatches
    overwrite: bool = True  # replace existing outputs; False refuses them before the run (one-job CLI default)
    jobs: int = 2  # jobs at once (on Ray: per node)
    workers: int | None = None  # inference workers; None: one per visible GPU, else one CPU worker
    retries: int = 2  # extra attempts for retryable failures
    stall_timeout: float = 60.0  # seconds without progress, while work is pending, before a stage is Stalled
    startup_timeout: float = 300.0  # allowance for model loading and first CUDA use
    job_timeout: float | None = None  # seconds one attempt of a job may take (None: no limit)
    backoff_s: float = 1.0  # first retry delay; doubles each attempt, with jitter
    shard: Shard | None = None  # render only this shard of the jobs (its own lock and result log)
    executor: str = "local"  # "local" (this machine's processes) or "ray" (a Ray cluster)
    ray_address: str | None = None  # what ray.init(address=...) takes; None: RAY_ADDRESS, else a private local Ray
    ray_shared_fs: bool = False  # every Ray node sees the same paths: nodes read inputs and write outputs directly
    ray_head_timeout: float = 30.0  # seconds the Ray head (GCS) may not answer before the run ends with ClusterLost

    @property
    def results_path(self) -> Path:
        """The result log: `--log` or `out_dir/results.jsonl`; a shard's has its name inserted
        (`results.shard-1-of-4.jsonl`), so no two shard processes append to one file."""
        path = self.log_path or self.out_dir / "results.jsonl"
        return shard_path(path, self.shard) if self.shard else path


@dataclass(frozen=True)
class JobSettings:
    """A job's own settings from its manifest row; None leaves the command line's value."""

    loop: str | None = None  # AvatarOptions.loop
    fps: float | None = None  # AvatarOptions.still_fps
    crf: int | None = None  # EncodeOptions.crf
    preset: str | None = None  # EncodeOptions.preset
    pads: tuple[int, int, int, int] | None = None  # ModelOptions.pads
    face: str | None = None  # FaceOptions.choice

    def given(self) -> dict:
        """The settings the row gave, by manifest column name (JSON-ready: pads as a list)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}


def face_choice(value) -> str:
    """A face choice in its one spelling (" Left" -> "left", 2 -> "2", "120, 80" or [120, 80] -> "120,80"); ValueError
    saying what is wrong when `value` is none (FACE_CHOICE_HINT lists them)."""
    text = _choice_text(value)
    if text in FACE_CHOICES:
        return text
    if re.fullmatch(r"[0-9]+", text):
        return str(int(text))
    if re.fullmatch(r"[0-9]+,[0-9]+", text):
        x, y = text.split(",")
        return f"{int(x)},{int(y)}"
    raise ValueError("is not a pixel x,y (two whole numbers from 0)" if "," in text else "is not a face choice")


def _choice_text(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list | tuple) and len(value) == 2 and all(type(v) is int for v in value):
        return f"{value[0]},{value[1]}"
    if isinstance(value, str):
        return "".join(value.split()).lower()
    raise ValueError("is not a face choice")


def job_options(options: RenderOptions, job, errors: Iterable[dict] = ()) -> RenderOptions:
    """The options `job` renders with: the run's options, with the job's own manifest settings on top, and what the
    job's earlier failures (`errors`, its record's incidents so far) change: after a hardware encoder failed, the
    CPU encoder. Every executor renders each attempt of a job with these."""
    s: JobSettings = job.settings
    if s != JobSettings():
        options = dataclasses.replace(
            options,
            avatar=_replace(options.avatar, loop=s.loop, still_fps=s.fps),
            encode=_replace(options.encode, crf=s.crf, preset=s.preset),
            model=_replace(options.model, pads=s.pads),
            face=_replace(options.face, choice=s.face),
        )
    encode = after_failures(options.encode, errors)
    return options if encode is options.encode else dataclasses.replace(options, encode=encode)


def _replace(options, **values):
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(options, **given) if given else options


def effective_settings(options: RenderOptions) -> dict:
    """The per-job settings (manifest column names) as `options` has them: what a job's record shows."""
    return {
        "loop": options.avatar.loop,
        "fps": options.avatar.still_fps,
        "crf": options.encode.crf,
        "preset": options.encode.preset,
        "pads": list(options.model.pads),
        "face": options.face.choice,
    }
