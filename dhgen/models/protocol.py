"""The model protocol: everything dhgen needs to know about a lip-sync model family, in one object.

A family is an instance of a `ModelFamily` subclass, registered under a name in the entry-point group
`dhgen.models` (`dhgen.models.registry`). It says:

- how it crops: `crop_rect` (the frame rectangle it wants for a tracked face box), `crop_size` (the side crops
  are resized to), `extract_crop` (how they are resized); its paste mask is the alpha its predictor returns with
  each patch;
- its audio conditioning and where it is computed: `audio_features` (cheap DSP, in the job process) or, with
  `audio_in_worker`, the predictor's own `audio_features` (a network such as whisper, in the inference worker,
  once per job); then `conditioning` turns the features into one entry per video frame (numpy, job process);
- how it loads: `check_checkpoint` (before anything starts, without torch), `load(checkpoint, device, dtype)`
  in the inference worker, raising `ModelLoadError` that names the file and the fix;
- what it runs on: `backend_for(checkpoint)` (numpy / torch / onnxruntime) and `gpu` (none / optional / required).

The module that defines a family is imported by job processes and by the CLI: it must import nothing heavy at
its top (no torch, no onnxruntime); `load` imports what the predictor needs. A predictor answers
`predict(CropBatch) -> PatchBatch` for a batch merged from several jobs, and must give each crop the same answer
whatever else is in its batch.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from dhgen.errors import UsageError
from dhgen.models.batches import CropBatch, PatchBatch

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels, x1/y1 exclusive
Box = tuple[float, float, float, float]  # a tracked face: x, y, w, h in frame pixels
Pads = tuple[int, int, int, int]  # --pads: top, bottom, left, right, in pixels
BACKENDS = ("numpy", "torch", "onnxruntime")
GPU_USES = ("none", "optional", "required")


class Predictor(Protocol):
    """A loaded model. `device` is where it runs ("cpu", "cuda:0"), `dtype` what it computes in ("float32",
    "float16"); both end up in every job's record. `fixed_shapes` (optional, default False): the predictor runs its
    network on slices of one fixed size of its own, so a crop's answer cannot depend on how many crops came with it
    and the worker need not pad GPU batches to one shape for it (`serving.AdaptivePredictor`)."""

    device: str
    dtype: str
    fixed_shapes: bool

    def predict(self, batch: CropBatch) -> PatchBatch:
        """uint8 BGR crops (B, S, S, 3), refs (B, S, S, 3) and conditioning (B, ...) -> uint8 BGR patches
        (B, S, S, 3) and alphas (B or 1, S, S)."""
        ...

    def audio_features(self, samples: np.ndarray) -> np.ndarray:
        """Only for `audio_in_worker` families: the job's features from its 16 kHz mono samples."""
        ...


class ModelFamily:
    """A model family. Subclass it, set the attributes that differ, and implement `conditioning` and `load`."""

    name: str = ""  # what `--model` takes: the entry point's name
    description: str = ""  # one line for `dhgen models`
    crop_size: int = 96  # crops are resized to crop_size x crop_size before the model sees them
    needs_checkpoint: bool = False  # --checkpoint is required (True) or refused (False)
    checkpoint_hint: str = ""  # what --checkpoint should name, said with every checkpoint error
    backend: str = "torch"  # numpy | torch | onnxruntime: what `load` runs on (see `backend_for`)
    backends: tuple[str, ...] = ()  # every backend `backend_for` may answer, for `dhgen models` (default: backend)
    gpu: str = "optional"  # none: always on the CPU, never given a GPU | optional | required
    cpu_bound: bool = True  # on a CPU the model, not the encoder, limits a run: its CPU worker gets every core
    audio_in_worker: bool = False  # features come from the predictor's `audio_features`, in the inference worker

    def backend_for(self, checkpoint: Path | None) -> str:
        """The backend that runs `checkpoint` (a family may take several formats: .pth for torch, .onnx)."""
        return self.backend

    def uses_gpu(self, checkpoint: Path | None) -> bool:
        """Whether a GPU helps: a numpy model, or a family that says `gpu = "none"`, runs in one CPU thread
        whatever --device says (one CPU worker locally, a CPU actor per Ray node, no GPU reserved)."""
        return self.gpu != "none" and self.backend_for(checkpoint) != "numpy"

    def check_checkpoint(self, checkpoint: Path) -> None:
        """Judge `checkpoint` before anything starts, without importing torch: raise `UsageError` (message naming
        the file, hint `checkpoint_hint`) when it cannot be this family's. By default it must exist."""
        if not Path(checkpoint).exists():
            raise UsageError(f"checkpoint {checkpoint} does not exist", hint=self.checkpoint_hint or None)

    def checkpoint_files(self, checkpoint: Path) -> list[Path]:
        """The files whose content identifies `checkpoint` (its record's `checkpoint_sha256` and the input
        fingerprint cover them): the file itself, or every file of a folder; a family that reads only some of a
        folder's files names those."""
        checkpoint = Path(checkpoint)
        return sorted(p for p in checkpoint.rglob("*") if p.is_file()) if checkpoint.is_dir() else [checkpoint]

    def crop_rect(self, box: Box, frame_w: int, frame_h: int, pads: Pads = (0, 10, 0, 0)) -> Rect:
        """The frame rectangle handed to the model for a face box, clipped to the frame: by default the box
        grown by `pads` (what Wav2Lip's inference does)."""
        x, y, w, h = (float(v) for v in box)
        top, bottom, left, right = pads
        return clip_rect((x - left, y - top, x + w + right, y + h + bottom), frame_w, frame_h)

    def extract_crop(self, frame: np.ndarray, rect: Rect) -> np.ndarray:
        """The model's input for one frame: `rect` of `frame` resized to crop_size x crop_size (uint8 BGR). By
        default area averaging or bilinear (`dhgen.composite.extract_crop`); a family trained on another resize
        (MuseTalk: LANCZOS4) says so here."""
        from dhgen.composite import extract_crop

        return extract_crop(frame, rect, self.crop_size)

    def audio_features(self, samples: np.ndarray) -> np.ndarray:
        """The job's audio features from its 16 kHz mono samples, in the job process (numpy only). By default the
        samples themselves; unused when `audio_in_worker`."""
        return samples

    def conditioning(self, features: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
        """One conditioning entry per video frame, float32 (n_frames, ...), from the job's features: an array,
        or (where an array of every frame's entry would be large) any object with `len()` whose `[indices]`
        (a list of frame indices) gives those frames' entries as one float32 array."""
        raise NotImplementedError(f"model family {self.name!r} does not define conditioning()")

    def load(self, checkpoint: Path | None, device: str, dtype: str) -> Predictor:
        """The predictor on `device` ("cpu", "cuda:N": already resolved) computing in `dtype` ("float32",
        "float16"); raises `dhgen.errors.ModelLoadError` for a missing or unusable checkpoint."""
        raise NotImplementedError(f"model family {self.name!r} does not define load()")


def clip_rect(rect: tuple[float, float, float, float], frame_w: int, frame_h: int) -> Rect:
    """A float rectangle rounded to pixels and clipped to the frame."""
    x0, y0, x1, y1 = rect
    return max(0, round(x0)), max(0, round(y0)), min(frame_w, round(x1)), min(frame_h, round(y1))
