"""Checks before a run: every option whose value can be judged without rendering is judged here, before the lock
is taken and before any process starts, so a mistake costs one `UsageError` (exit 2) and leaves nothing behind.

`check_options(options, run)` is called by `dhgen.runner.render` (so the CLI and `dhgen.render` both get it).
Nothing here imports torch: a checkpoint is recognised by its bytes (a `torch.save` zip with `data.pkl`, a
TorchScript zip, or the legacy pickle's magic number), and a CUDA device by what the driver exposes.
"""

from __future__ import annotations

import os
import pickletools
import re
import tarfile
import zipfile
from pathlib import Path

from dhgen.encoders import CRF_RANGE, resolve_encoder
from dhgen.errors import UsageError
from dhgen.models import get_spec
from dhgen.options import (
    FACE_CHOICE_HINT,
    LOOP_MODES,
    AvatarOptions,
    EncodeOptions,
    FaceOptions,
    ModelOptions,
    RenderOptions,
    RunOptions,
    face_choice,
)

DEVICE_SYNTAX = re.compile(r"auto|cpu|cuda(:\d+)?")

# torch.save's legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2).
LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
# Globals a pickle of plain weights refers to (tensors, storages, OrderedDict, builtins); anything else is a
# pickled Python object, which dhgen never unpickles (that could run code from the file).
WEIGHT_GLOBALS = ("torch", "torch._utils", "torch.serialization", "torch.storage", "torch._tensor", "collections")
WEIGHT_GLOBALS += ("__builtin__", "builtins", "_codecs", "numpy")
CHECKPOINT_HINT = (
    "pass a Wav2Lip generator checkpoint: a .pth saved with torch.save({'state_dict': ...}) or a TorchScript .pt"
)


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
    """Model name, checkpoint, device syntax (and, when jobs run on this machine, that its GPU exists), batch."""
    spec = get_spec(model.name)
    if spec.needs_checkpoint and model.checkpoint is None:
        raise UsageError(f"--model {model.name} needs --checkpoint PATH", hint=CHECKPOINT_HINT)
    if not spec.needs_checkpoint and model.checkpoint is not None:
        raise UsageError(
            f"--model {model.name} takes no checkpoint, but --checkpoint {model.checkpoint} was given",
            hint="drop --checkpoint, or choose a model that uses one (--model wav2lip)",
        )
    if model.checkpoint is not None:
        check_checkpoint(Path(model.checkpoint))
    if not DEVICE_SYNTAX.fullmatch(model.device):
        raise UsageError(f"--device {model.device!r} is not a device", hint="use auto, cpu, cuda or cuda:N")
    if local:
        check_device(model.device)
    if model.batch_size is not None and model.batch_size < 1:
        raise UsageError(f"--batch-size {model.batch_size} must be at least 1")
    if len(model.pads) != 4 or any(not isinstance(p, int) for p in model.pads):
        raise UsageError(f"--pads {model.pads} must be four whole numbers: top bottom left right")


def check_device(device: str, gpus: int | None = None) -> None:
    """`cuda` / `cuda:N` need a visible NVIDIA GPU (N of them); decided from the driver, without importing torch.

    A GPU box whose torch is a CPU-only build passes here and is caught by the inference worker."""
    if not device.startswith("cuda"):
        return
    if gpus is None:
        from dhgen.executors.local.supervisor import visible_gpu_count

        gpus = visible_gpu_count()
    hint = "use --device cpu, or --device auto to use a GPU when there is one"
    if gpus == 0:
        why = "CUDA_VISIBLE_DEVICES hides every GPU" if _gpus_hidden() else "no NVIDIA GPU or driver was found"
        raise UsageError(f"--device {device}: this machine has no usable CUDA device ({why})", hint=hint)
    index = device.partition(":")[2]
    if index and int(index) >= gpus:
        raise UsageError(
            f"--device {device}: only {gpus} CUDA device(s) are visible (cuda:0 .. cuda:{gpus - 1})", hint=hint
        )


def _gpus_hidden() -> bool:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible is not None and os.path.isdir("/proc/driver/nvidia/gpus")


def check_checkpoint(path: Path) -> None:
    """The checkpoint exists and is a PyTorch file holding weights (read as bytes: nothing is unpickled)."""
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist", hint=CHECKPOINT_HINT)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} is not a file", hint=CHECKPOINT_HINT)
    try:
        kind, objects = _checkpoint_kind(path)
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc.strerror or exc}", hint=CHECKPOINT_HINT) from exc
    if kind is None:
        raise UsageError(f"{path} is not a PyTorch checkpoint", hint=CHECKPOINT_HINT)
    if objects:
        raise UsageError(
            f"{path} holds pickled Python objects ({', '.join(objects[:3])}), not only weights; dhgen does not "
            "unpickle objects, since that could run code from the file",
            hint="re-save the weights alone: torch.save({'state_dict': model.state_dict()}, 'wav2lip.pth')",
        )


def _checkpoint_kind(path: Path) -> tuple[str | None, list[str]]:
    """("zip" | "torchscript" | "legacy" | None, the non-weight globals its pickle names)."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                pickles = [n for n in names if n.rsplit("/", 1)[-1] == "data.pkl"]
                if not pickles:
                    return None, []
                if any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in names):
                    return "torchscript", []  # its classes are TorchScript code, loaded by torch.jit
                return "zip", _object_globals(archive.read(pickles[0]))
        except (zipfile.BadZipFile, EOFError):
            return None, []
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:2] == b"\x80\x02" and head[2 : 2 + len(LEGACY_MAGIC)] == LEGACY_MAGIC:
        return "legacy", []
    if tarfile.is_tarfile(path):  # torch's oldest format: a tar with a "pickle" member
        with tarfile.open(path) as archive:
            return ("legacy", []) if "pickle" in archive.getnames() else (None, [])
    return None, []


def _object_globals(data: bytes) -> list[str]:
    """`module.name` of every global a pickle refers to that plain weights never need (opcodes read, not run)."""
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                module, name = strings[-2], strings[-1]
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if module not in WEIGHT_GLOBALS and not module.startswith("numpy."):
                found.append(f"{module}.{name}")
    except (ValueError, EOFError):  # a torn pickle: torch itself reports it when loading
        pass
    return list(dict.fromkeys(found))


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
    for name, value in (("--stall-timeout", run.stall_timeout), ("--job-timeout", run.job_timeout)):
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
