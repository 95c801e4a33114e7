"""Checks before a run: every option whose value can be judged without rendering is judged here, before the lock
is taken and before any process starts, so a mistake costs one `UsageError` (exit 2) and leaves nothing behind.

`check_options(options, run)` is called by `dhgen.runner.render` (so the CLI and `dhgen.render` both get it).
Nothing here imports torch: a checkpoint is recognised by its bytes (a `torch.save` zip with `data.pkl`, a
TorchScript zip, or the legacy pickle's magic number), and a CUDA device by what the driver lists (`dhgen.gpus`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dhgen.encoders import CRF_RANGE, resolve_encoder
from dhgen.errors import UsageError
from dhgen.gpus import Gpus, visible_gpus
from dhgen.models import get_family
from dhgen.options import (
    FACE_CHOICE_HINT,
    LOOP_MODES,
    PRECISIONS,
    AvatarOptions,
    EncodeOptions,
    FaceOptions,
    ModelOptions,
    RenderOptions,
    RunOptions,
    face_choice,
)

DEVICE_SYNTAX = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_options(options: RenderOptions, run: RunOptions) -> None:
    """Raise `UsageError` (message and hint) for the first option that cannot work; return if all can."""
    check_model(options.model, local=run.executor == "local")
    check_encode(options.encode)
    check_avatar(options.avatar)
    check_face(options.face)
    check_run(run)


# --- the encoder ------------------------------------------------------------------------------------------------


def check_encode(encode: EncodeOptions) -> None:
    """--crf on x264's scale; the encoder opens here and takes the preset (`dhgen.encoders.resolve_encoder`, which
    probes once per process)."""
    low, high = CRF_RANGE
    if not low <= encode.crf <= high:
        raise UsageError(f"--crf {encode.crf} is not in {low}..{high}", hint="lower is better quality; 18-28 is usual")
    resolve_encoder(encode)


# --- the model --------------------------------------------------------------------------------------------------


def check_model(model: ModelOptions, local: bool = True) -> None:
    """Model family (registered and importable), its checkpoint (judged by the family, without torch), device
    syntax (and, when jobs run on this machine, that its GPU exists), precision, batch."""
    family = get_family(model.name)
    if family.needs_checkpoint and model.checkpoint is None:
        raise UsageError(f"--model {model.name} needs --checkpoint PATH", hint=family.checkpoint_hint or None)
    if not family.needs_checkpoint and model.checkpoint is not None:
        raise UsageError(
            f"--model {model.name} takes no checkpoint, but --checkpoint {model.checkpoint} was given",
            hint="drop --checkpoint, or choose a model that uses one (`dhgen models` lists them)",
        )
    if model.checkpoint is not None:
        family.check_checkpoint(Path(model.checkpoint))
    if not DEVICE_SYNTAX.fullmatch(model.device):
        raise UsageError(f"--device {model.device!r} is not a device", hint="use auto, cpu, cuda or cuda:N")
    if local:
        check_device(model.device)
    if model.precision not in PRECISIONS:
        raise UsageError(
            f"--precision {model.precision!r} is not a precision", hint=f"use one of: {', '.join(PRECISIONS)}"
        )
    if model.batch_size is not None and model.batch_size < 1:
        raise UsageError(f"--batch-size {model.batch_size} must be at least 1")
    if len(model.pads) != 4 or any(not isinstance(p, int) for p in model.pads):
        raise UsageError(f"--pads {model.pads} must be four whole numbers: top bottom left right")


def check_device(device: str, gpus: Gpus | None = None) -> None:
    """`cuda` / `cuda:N` need N+1 GPUs that CUDA will see (`dhgen.gpus`: the driver, CUDA_VISIBLE_DEVICES), decided
    without importing torch.

    A GPU box whose torch is a CPU-only build passes here and is caught by the inference worker."""
    if not device.startswith("cuda"):
        return
    gpus = gpus or visible_gpus()
    hint = "use --device cpu, or --device auto to use a GPU when there is one"
    if gpus.count == 0:
        if gpus.hidden:
            why = (
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r} hides all {gpus.installed} GPU(s)"
            )
        else:
            why = gpus.problem or "the NVIDIA driver lists no GPU"
        raise UsageError(f"--device {device}: this machine has no usable CUDA device ({why})", hint=hint)
    index = device.partition(":")[2]
    if index and int(index) >= gpus.count:
        raise UsageError(
            f"--device {device}: only {gpus.count} CUDA device(s) are visible (cuda:0 .. cuda:{gpus.count - 1})",
            hint=hint,
        )


def check_input_file(path: Path, option: str) -> None:
    """An input given on the command line (one-job form) exists and is a file (a manifest's inputs are checked
    by their own jobs, so one missing file does not stop a batch)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option} {path} does not exist", hint="check the path (relative to the current folder)")
    if not path.is_file():
        raise UsageError(f"{option} {path} is not a file", hint="pass a media file, not a folder")


# --- avatar, encoding, the run ----------------------------------------------------------------------------------


def check_avatar(avatar: AvatarOptions) -> None:
    if avatar.loop not in LOOP_MODES:
        raise UsageError(f"--loop {avatar.loop!r} is not a loop mode", hint=f"use one of: {', '.join(LOOP_MODES)}")
    if not avatar.still_fps > 0:
        raise UsageError(f"--fps {avatar.still_fps} must be above 0")


def check_face(face: FaceOptions) -> None:
    """--face names a face the tracker knows how to choose; --min-face-coverage is a share of the frames."""
    try:
        face_choice(face.choice)
    except ValueError as exc:
        raise UsageError(f"--face {face.choice!r} {exc}", hint=FACE_CHOICE_HINT) from None
    if not 0 <= face.min_coverage <= 1:
        raise UsageError(
            f"--min-face-coverage {face.min_coverage:g} is not a share of the frames",
            hint="give a number from 0 (off) to 1 (every frame must show the face), like 0.9",
        )


def check_run(run: RunOptions) -> None:
    """Counts and timeouts in range; the output folder and the result log can be made where they are asked for."""
    for name, value, least in (("--jobs", run.jobs, 1), ("--retries", run.retries, 0), ("--workers", run.workers, 1)):
        if value is not None and value < least:
            raise UsageError(f"{name} {value} must be at least {least}")
    timeouts = (("--stall-timeout", run.stall_timeout), ("--job-timeout", run.job_timeout))
    for name, value in (*timeouts, ("--ray-head-timeout", run.ray_head_timeout)):
        if value is not None and not value > 0:
            raise UsageError(f"{name} {value} must be above 0 seconds")
    check_folder(Path(run.out_dir), "output folder")
    log = Path(run.results_path)
    if log.is_dir():
        raise UsageError(f"result log {log} is a folder, not a file", hint="pass --log a file name, e.g. OUT/log.jsonl")
    check_folder(log.parent, "result log folder")


def check_folder(folder: Path, what: str) -> None:
    """`folder` is a folder or can be made: no part of its path is a file, the nearest existing part is writable."""
    problem = folder_problem(folder)
    if problem:
        raise UsageError(f"{what} {problem}", hint="choose a folder you can write to (dhgen creates missing ones)")


def folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be used or created as a folder ("renders is a file, not a folder"); None if it can."""
    target = Path(os.path.abspath(folder))
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = f"{folder}" if existing == target else f"{folder}: {existing}"
    if not existing.is_dir():
        return f"{where} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{where} is not writable"
    return None
