"""The model layer: every lip-sync network dhgen runs is a *model family* behind one protocol.

    protocol.py      ModelFamily (crop geometry, audio conditioning and where it runs, loading, backend, GPU)
    registry.py      which families exist: the entry-point group `dhgen.models` (built-ins and plugins alike)
    batches.py       CropBatch / PatchBatch / AudioRequest: what crosses between a job and the model
    serving.py       one loaded model serving many jobs: device and precision, batch halving on OOM, typed errors
    checkpoints.py   judging weight files by their bytes, before anything starts (no torch)
    torch_backend.py the torch plumbing shared by torch families (devices, CUDA errors, the batched forward)
    onnx_backend.py  the onnxruntime plumbing shared by ONNX families (devices, thread share, sessions)
    onnx_graph.py    an ONNX file's inputs and outputs read from its bytes, before anything starts
    mouthwarp/       the embedded weight-free family (numpy + OpenCV)
    wav2lip/         Wav2Lip: its published generator under torch, or a FaceFusion-style ONNX graph

Job processes and the CLI import this package and the families' own modules, never torch: a family's heavy
imports happen in its `load`, inside the inference worker.
"""

from dhgen.models.batches import (
    AudioRequest,
    CropBatch,
    PatchBatch,
    answer_requests,
    concat_patches,
    merge_batches,
    split_patches,
)
from dhgen.models.protocol import ModelFamily, Predictor, Rect, clip_rect
from dhgen.models.registry import FamilyEntry, get_family

__all__ = [
    "AudioRequest",
    "CropBatch",
    "FamilyEntry",
    "ModelFamily",
    "PatchBatch",
    "Predictor",
    "Rect",
    "answer_requests",
    "clip_rect",
    "concat_patches",
    "get_family",
    "merge_batches",
    "split_patches",
]
