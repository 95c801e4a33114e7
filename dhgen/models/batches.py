"""What crosses between a job and the model: crop batches in, patch batches out, and (for a family that computes
its audio features with a network) one audio request per job. All numpy, all picklable, torch-free.

An inference worker merges the batches of several jobs into one forward pass (`merge_batches`) and hands each
job its share of the answer (`split_patches`); `answer_requests` does both for a worker's mixed list of requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CropBatch:
    """What a job sends to the model: face crops, their references and the per-frame audio conditioning."""

    crops: np.ndarray  # uint8 (B, S, S, 3), BGR, S = the family's crop_size
    refs: np.ndarray  # uint8 (B or 1, S, S, 3): the avatar's reference crop(s), cut the same way
    cond: np.ndarray  # float32 (B, ...): the family's conditioning for each crop's video frame

    def __len__(self) -> int:
        return len(self.crops)


@dataclass
class PatchBatch:
    """What the model returns: patches to paste back and where (alpha 0 keeps the frame's pixel exactly)."""

    patches: np.ndarray  # uint8 (B, S, S, 3), BGR
    alphas: np.ndarray  # uint8 (B or 1, S, S), 255 = take the patch, 0 = keep the frame; one for all if 1

    def alpha(self, i: int) -> np.ndarray:
        return self.alphas[i if len(self.alphas) > 1 else 0]


@dataclass
class AudioRequest:
    """A job's whole audio track, for a family whose features come from a network in the inference worker
    (`ModelFamily.audio_in_worker`); answered with the family's feature array, once per job attempt."""

    samples: np.ndarray  # float32 (N,) mono at dhgen.audio.SAMPLE_RATE (16 kHz)

    def __len__(self) -> int:
        return 1  # one slot of a worker's batch: never split, merged with nothing


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


def answer_requests(predictor, requests: list) -> list:
    """A worker's answers to a list of requests from several jobs, in order: every CropBatch merged into one
    `predictor.predict`, each AudioRequest answered by `predictor.audio_features`."""
    crops = [r for r in requests if not isinstance(r, AudioRequest)]
    patches = iter(split_patches(predictor.predict(merge_batches(crops)), [len(b) for b in crops]) if crops else ())
    return [predictor.audio_features(r.samples) if isinstance(r, AudioRequest) else next(patches) for r in requests]
