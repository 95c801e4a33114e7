"""The peer for the wav2lip comparison: Wav2Lip's own `inference.py` (github.com/Rudrabha/Wav2Lip), run as its
users run it, on the same random generator weights and the same inputs as dhgen.

Nothing of Wav2Lip is in this repository (its licence is not ours): pass a checkout and a Python that has its
requirements (see benchmarks/README.md). The checkout is copied into the benchmark's temp folder, and its face
detector's weights file (`face_detection/detection/sfd/s3fd.pth`, which the peer downloads from the web on first
use) is written there as a **stand-in**: the real S3FD network (the checkout's own `net_s3fd.py`), random weights
in its VGG body, so every frame costs the peer what it costs with the published detector, and its six score/box
heads set to constants so that it finds boxes at one scale only (the 512 px anchors: a box per 128 px of frame,
not a face; the peer crops and pastes there). What this changes against the published weights: where the mouth
is pasted, and the number of candidate boxes its Python loop decodes (60 per 720p frame here; with the real
detector, the few dozen around a face). Inference, decoding, memory and the ffmpeg step are the peer's own.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

DETECTOR = Path("face_detection/detection/sfd")
KEPT_HEAD = "conv7_2_mbox"  # stride 128, 512 px anchors: the one scale whose boxes pass the peer's 0.5 threshold
SCORE_HEADS = ("conv3_3_norm_mbox", "conv4_3_norm_mbox", "conv5_3_norm_mbox", "fc7_mbox", "conv6_2_mbox", KEPT_HEAD)
NORM_SCALES = {"conv3_3_norm": 10.0, "conv4_3_norm": 8.0, "conv5_3_norm": 5.0}  # S3FD's L2Norm initial scales
LOGIT = 5.0  # softmax(+-5) -> 0.99995 / 0.00005: far from the peer's 0.05 and 0.5 thresholds


def prepare_peer(checkout: Path, into: Path, seed: int = 0) -> Path:
    """A copy of the Wav2Lip checkout under `into`, with the stand-in detector weights; returns the copy."""
    repo = into / "Wav2Lip"
    shutil.copytree(checkout, repo, ignore=shutil.ignore_patterns(".git", "*.pth"))
    (repo / "temp").mkdir(exist_ok=True)  # inference.py writes temp/result.avi there
    write_standin_s3fd(repo, repo / DETECTOR / "s3fd.pth", seed)
    return repo


def write_standin_s3fd(repo: Path, path: Path, seed: int = 0) -> Path:
    """The peer's S3FD network, random body, constant heads (see the module docstring), saved as a state dict."""
    import torch

    spec = importlib.util.spec_from_file_location("peer_net_s3fd", repo / DETECTOR / "net_s3fd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # only torch: the package's __init__ (scipy, downloads) is not run
    torch.manual_seed(seed)
    state = module.s3fd().state_dict()
    for name, scale in NORM_SCALES.items():
        state[f"{name}.weight"].fill_(scale)
    for head in SCORE_HEADS:
        for kind in ("conf", "loc"):
            state[f"{head}_{kind}.weight"].zero_()
            state[f"{head}_{kind}.bias"].zero_()
        conf = state[f"{head}_conf.bias"]  # background logit(s) first, face last
        conf[:-1], conf[-1] = (-LOGIT, LOGIT) if head == KEPT_HEAD else (LOGIT, -LOGIT)
    torch.save(state, path)
    return path


def peer_cmd(python: str, checkpoint: Path, avatar: Path, audio: Path, out: Path) -> list[str]:
    """inference.py with its defaults (face detection batch 16, Wav2Lip batch 128, pads 0 10 0 0), to run in the
    copy's folder. Its `--face` path must hold exactly one '.' (it splits the path there to find the extension)."""
    if str(avatar).count(".") != 1:
        raise ValueError(f"{avatar}: Wav2Lip's inference.py needs exactly one '.' in the --face path")
    args = ["--checkpoint_path", checkpoint, "--face", avatar, "--audio", audio, "--outfile", out]
    return [python, "inference.py", *map(str, args)]
