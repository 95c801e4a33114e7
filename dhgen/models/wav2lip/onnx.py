"""Wav2Lip as an ONNX graph with FaceFusion's I/O, under onnxruntime: the graph's check and its predictor.

FaceFusion ships the generator as `wav2lip_96.onnx` / `wav2lip_gan_96.onnx` (and people export their own the same
way). Its I/O, which `check_graph` holds a file to before anything starts:

    source  float32 (N, 1, 80, 16)   one mel window per frame (Wav2Lip's features, in [-4, 4])
    target  float32 (N, 6, 96, 96)   BGR in [0, 1]: the crop with rows 48-95 zeroed, then the unmasked face
    output  float32 (N, 3, 96, 96)   the generated face, BGR in [0, 1]

N is fixed (FaceFusion's own files take 1: the predictor feeds them `N` crops at a time) or dynamic (the predictor
feeds a whole merged batch). The predictor builds `target` exactly as the torch path does (`network.Wav2LipModel`:
channels 3-5 are the job's reference crop) and pastes through the same alpha, so a `.pth` and its export render
the same frames. Nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from dhgen.errors import ModelLoadError, OutOfMemory, UsageError, first_line
from dhgen.models.batches import CropBatch, PatchBatch
from dhgen.models.onnx_backend import INSTALL_HINT, is_oom, open_session, session_device
from dhgen.models.onnx_graph import GraphIO, NotOnnx, TensorInfo, graph_io
from dhgen.models.wav2lip import ALPHA_TOP, FACE_SIZE, MEL_BINS, MEL_STEPS

log = logging.getLogger(__name__)

# What each tensor must be, batch axis excepted (FaceFusion's Wav2Lip I/O).
SOURCE, TARGET = "source", "target"
INPUT_SHAPES = {SOURCE: (1, MEL_BINS, MEL_STEPS), TARGET: (6, FACE_SIZE, FACE_SIZE)}
OUTPUT_SHAPE = (3, FACE_SIZE, FACE_SIZE)
GRAPH_HINT = (
    "pass a Wav2Lip graph with FaceFusion's I/O (wav2lip_96.onnx, wav2lip_gan_96.onnx): inputs source float32 "
    "(N, 1, 80, 16) and target float32 (N, 6, 96, 96), output (N, 3, 96, 96) in [0, 1]; N fixed or dynamic"
)


class GraphMismatch(ValueError):
    """An ONNX graph whose inputs or output are not FaceFusion's Wav2Lip I/O (the message names which)."""


# --- judging the graph ---------------------------------------------------------------------------------------------


def check_graph(path: Path) -> None:
    """Before anything starts, by the file's bytes: `path` is an ONNX graph with FaceFusion's Wav2Lip I/O and
    onnxruntime is installed; else `UsageError` naming the file (and the input and the shape found)."""
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist", hint=GRAPH_HINT)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} is not a file", hint=GRAPH_HINT)
    try:
        graph_batch(path)
    except NotOnnx as exc:
        raise UsageError(f"{path} is not an ONNX graph ({exc})", hint=GRAPH_HINT) from exc
    except GraphMismatch as exc:
        raise UsageError(f"{path}: {exc}", hint=GRAPH_HINT) from exc
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc.strerror or exc}", hint=GRAPH_HINT) from exc
    if importlib.util.find_spec("onnxruntime") is None:
        raise UsageError(f"--checkpoint {path} is an ONNX graph, and onnxruntime is not installed", hint=INSTALL_HINT)


def graph_batch(path: Path) -> int | None:
    """The batch the graph at `path` takes: a fixed N, or None when dynamic. `NotOnnx` for a file that is not a
    graph; `GraphMismatch` naming the first input or output that does not fit."""
    return _batch_of(graph_io(path))


def _batch_of(io: GraphIO) -> int | None:
    inputs = {tensor.name: tensor for tensor in io.inputs}
    found = ", ".join(_described(t) for t in io.inputs) or "none"
    for name in INPUT_SHAPES:
        if name not in inputs:
            raise GraphMismatch(f"the graph has no input {name!r} (its inputs: {found})")
    extra = [t for t in io.inputs if t.name not in INPUT_SHAPES]
    if extra:
        raise GraphMismatch(f"the graph has an input dhgen does not feed: {_described(extra[0])}")
    if not io.outputs:
        raise GraphMismatch("the graph has no output")
    sizes = {_fits(inputs[name], shape, "input") for name, shape in INPUT_SHAPES.items()}
    sizes.add(_fits(io.outputs[0], OUTPUT_SHAPE, "output"))
    fixed = {n for n in sizes if isinstance(n, int)}
    if len(fixed) > 1:
        shapes = ", ".join(_described(t) for t in [*io.inputs, io.outputs[0]])
        raise GraphMismatch(f"its inputs and output disagree on the batch: {shapes}")
    return fixed.pop() if fixed else None


def _fits(tensor: TensorInfo, shape: tuple[int, ...], kind: str) -> int | str | None:
    """The tensor's batch axis when it is float32 (N, *shape) (a named axis fits any size); else GraphMismatch."""
    expected = f"float32 (N, {', '.join(map(str, shape))})"
    declared = tensor.shape
    fits = declared is not None and len(declared) == len(shape) + 1
    fits = fits and all(not isinstance(d, int) or d == want for d, want in zip(declared[1:], shape, strict=True))
    if tensor.elem_type != "float32" or not fits:
        raise GraphMismatch(f"{kind} {_described(tensor)}, expected {expected}")
    batch = declared[0]
    if isinstance(batch, int) and batch < 1:
        raise GraphMismatch(f"{kind} {_described(tensor)}: a batch of {batch}")
    return batch


def _described(tensor: TensorInfo) -> str:
    """'target' float32 (1, 3, 96, 96); a named axis shows its name, an undeclared one '?'."""
    if tensor.shape is None:
        return f"{tensor.name!r} {tensor.elem_type} (shape not declared)"
    dims = ", ".join("?" if d is None else str(d) for d in tensor.shape)
    return f"{tensor.name!r} {tensor.elem_type} ({dims}{',' if len(tensor.shape) == 1 else ''})"


# --- the predictor -------------------------------------------------------------------------------------------------


def load_predictor(checkpoint: Path, device: str, dtype: str) -> OnnxWav2Lip:
    """The predictor for the graph at `checkpoint` on `device` (resolved by `onnx_backend.resolve_device`). The
    graph computes in the precision it was exported in: `dtype` is not applied (the record says float32)."""
    try:
        batch = graph_batch(checkpoint)
    except (NotOnnx, GraphMismatch) as exc:
        raise ModelLoadError(f"not a Wav2Lip ONNX graph: {exc}", path=checkpoint, hint=GRAPH_HINT) from exc
    except OSError as exc:
        why = exc.strerror or exc
        raise ModelLoadError(f"cannot read checkpoint: {why}", path=checkpoint, hint=GRAPH_HINT) from exc
    session = open_session(checkpoint, device, GRAPH_HINT)
    if dtype != "float32":
        log.info("%s computes in the precision it was exported in (float32), not %s", checkpoint.name, dtype)
    predictor = OnnxWav2Lip(session, session_device(session, device), batch)
    predictor.probe(checkpoint)
    return predictor


class OnnxWav2Lip:
    """uint8 BGR crops/refs + mel windows -> uint8 BGR patches + the torch path's alpha, through an ONNX graph."""

    dtype = "float32"

    def __init__(self, session, device: str, batch: int | None) -> None:
        self.session, self.device, self.batch = session, device, batch
        self.output = session.get_outputs()[0].name
        self.alpha = _alpha()

    def predict(self, batch: CropBatch) -> PatchBatch:
        source, target = graph_inputs(batch)
        step = self.batch or max(1, len(batch))
        parts = [self._run(source[i : i + step], target[i : i + step]) for i in range(0, len(batch), step)]
        faces = np.concatenate(parts) if parts else np.zeros((0, *OUTPUT_SHAPE), np.float32)
        patches = np.clip(faces * np.float32(255.0) + np.float32(0.5), 0.0, 255.0).astype(np.uint8)
        return PatchBatch(np.ascontiguousarray(patches.transpose(0, 2, 3, 1)), self.alpha)

    def probe(self, path: Path) -> None:
        """One zero frame through the graph at load: it must answer (N, 3, 96, 96)."""
        n = self.batch or 1
        try:
            out = self.session.run([self.output], _zeros(n))[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes
            why = first_line(exc)
            raise ModelLoadError(f"the graph fails on a zero frame: {why}", path=path, hint=GRAPH_HINT) from exc
        if out.shape != (n, *OUTPUT_SHAPE):
            raise ModelLoadError(f"the graph answers {out.shape} for {n} frame(s)", path=path, hint=GRAPH_HINT)

    def _run(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        n = len(source)
        if self.batch is not None and n < self.batch:  # a fixed batch: fill it with zero frames
            source, target = (_padded(a, self.batch) for a in (source, target))
        try:
            return self.session.run([self.output], {SOURCE: source, TARGET: target})[0][:n]
        except Exception as exc:
            if self.device.startswith("cuda") and is_oom(exc):
                raise OutOfMemory(f"CUDA out of memory running wav2lip (ONNX) on {n} crops on {self.device}") from exc
            raise


def graph_inputs(batch: CropBatch) -> tuple[np.ndarray, np.ndarray]:
    """`source` and `target` for a batch, built as `network.Wav2LipModel` builds the torch generator's input."""
    crops, refs = np.asarray(batch.crops), np.asarray(batch.refs)
    if crops.shape[1:] != (FACE_SIZE, FACE_SIZE, 3) or refs.shape != crops.shape:
        raise ValueError(f"wav2lip expects crops and refs of shape (B, 96, 96, 3), got {crops.shape} and {refs.shape}")
    cond = np.asarray(batch.cond, dtype=np.float32)
    if cond.shape != (len(crops), MEL_BINS, MEL_STEPS):
        raise ValueError(f"wav2lip expects (B, {MEL_BINS}, {MEL_STEPS}) mel windows, got {cond.shape}")
    target = np.empty((len(crops), 6, FACE_SIZE, FACE_SIZE), np.float32)
    target[:, :3] = crops.transpose(0, 3, 1, 2)
    target[:, :3, FACE_SIZE // 2 :] = 0.0
    target[:, 3:] = refs.transpose(0, 3, 1, 2)
    target /= np.float32(255.0)
    return np.ascontiguousarray(cond[:, None]), target


def _padded(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.zeros((n - len(a), *a.shape[1:]), a.dtype)])


def _zeros(n: int) -> dict[str, np.ndarray]:
    return {name: np.zeros((n, *shape), np.float32) for name, shape in INPUT_SHAPES.items()}


def _alpha() -> np.ndarray:
    from dhgen.composite import feather_mask

    return feather_mask(FACE_SIZE, top=ALPHA_TOP)[None]
