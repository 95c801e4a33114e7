"""Model registry: what each model needs from a job (crop geometry, conditioning), importable without torch.

Job processes use these specs to cut crops and compute audio features. Inference workers load the models
(`dhgen.serving.load_model`): a "numpy" model (`dhgen.models.mouthwarp`) is array maths that never imports torch;
only a "torch" model (`dhgen.models.wav2lip`) brings torch into its worker, through `dhgen.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhgen.errors import UsageError

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels, x1/y1 exclusive


@dataclass(frozen=True)
class ModelSpec:
    name: str
    crop_size: int  # crops are resized to crop_size x crop_size before the model sees them
    conditioning: str  # "openness": one float per frame; "mel": an (80, 16) mel window per frame
    needs_checkpoint: bool
    cpu_bound: bool  # on a CPU, the model (not the encoder) limits the run: its worker gets every core
    backend: str = "torch"  # "numpy": numpy/OpenCV on the CPU, no torch, any --device; "torch": dhgen.inference

    @property
    def uses_gpu(self) -> bool:
        """Whether a GPU helps: a numpy model runs in one CPU thread whatever --device says (one CPU worker
        locally, a CPU actor per Ray node, no GPU reserved)."""
        return self.backend == "torch"

    def crop_rect(self, box, frame_w: int, frame_h: int, pads=(0, 10, 0, 0)) -> Rect:
        """The frame rectangle handed to the model for a face box (x, y, w, h), clipped to the frame."""
        x, y, w, h = (float(v) for v in box)
        if self.name == "wav2lip":
            top, bottom, left, right = pads
            x0, y0, x1, y1 = x - left, y - top, x + w + right, y + h + bottom
        else:  # mouthwarp: a square around the mouth and chin
            side = 0.78 * w
            cx, cy = x + 0.5 * w, y + 0.84 * h
            x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
        x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
        x1, y1 = min(frame_w, int(round(x1))), min(frame_h, int(round(y1)))
        return x0, y0, x1, y1


SPECS = {
    "mouthwarp": ModelSpec(
        "mouthwarp", crop_size=128, conditioning="openness", needs_checkpoint=False, cpu_bound=False, backend="numpy"
    ),
    "wav2lip": ModelSpec("wav2lip", crop_size=96, conditioning="mel", needs_checkpoint=True, cpu_bound=True),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}", hint=f"choose one of: {', '.join(SPECS)}") from None


@dataclass
class CropBatch:
    """What a job sends to the model: face crops, their neutral references and the audio conditioning."""

    crops: np.ndarray  # uint8 (B, S, S, 3), BGR, S = spec.crop_size
    refs: np.ndarray  # uint8 (B or 1, S, S, 3): the avatar's closed-mouth reference frame, cut the same way
    cond: np.ndarray  # float32: (B,) mouth openness in [0, 1], or (B, 80, 16) mel windows

    def __len__(self) -> int:
        return len(self.crops)


@dataclass
class PatchBatch:
    """What the model returns: patches to paste back and where (alpha 0 keeps the frame's pixel exactly)."""

    patches: np.ndarray  # uint8 (B, S, S, 3), BGR
    alphas: np.ndarray  # uint8 (B or 1, S, S), 255 = take the patch, 0 = keep the frame; one for all if 1

    def alpha(self, i: int) -> np.ndarray:
        return self.alphas[i if len(self.alphas) > 1 else 0]


def merge_batches(batches: list[CropBatch]) -> CropBatch:
    """One batch of all crops; references given once per batch ((1, S, S, 3)) are repeated to match."""
    refs = [np.broadcast_to(b.refs, b.crops.shape) for b in batches]
    return CropBatch(
        crops=np.concatenate([b.crops for b in batches]),
        refs=np.ascontiguousarray(np.concatenate(refs)),
        cond=np.concatenate([b.cond for b in batches]),
    )


def split_patches(result: PatchBatch, sizes: list[int]) -> list[PatchBatch]:
    """The inverse of merge_batches for the model's answer: one PatchBatch per original batch."""
    bounds = np.cumsum([0, *sizes])
    shared = len(result.alphas) == 1 and len(result.patches) != 1
    return [
        PatchBatch(result.patches[a:b], result.alphas if shared else result.alphas[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def concat_patches(parts: list[PatchBatch]) -> PatchBatch:
    """One PatchBatch of several (a shared alpha stays shared when every part shares the same one)."""
    patches = np.concatenate([p.patches for p in parts])
    if all(len(p.alphas) == 1 for p in parts) and all(np.array_equal(p.alphas, parts[0].alphas) for p in parts):
        return PatchBatch(patches, parts[0].alphas)
    alphas = np.concatenate([np.broadcast_to(p.alphas, p.patches.shape[:3]) for p in parts])
    return PatchBatch(patches, alphas)
