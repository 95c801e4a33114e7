"""Proof of sameness: dhgen's musetalk family against MuseTalk's own modules, on the same weights and inputs.

    .venv/bin/python tools/musetalk_sameness.py --musetalk MUSETALK_SRC [--checkpoint MODELS] [--crops 4]
        [--torchvision TV_SRC] [--audio WAV] [--avatar VIDEO] [--out report.txt]

MUSETALK_SRC is a checkout of TMElyralab/MuseTalk (the folder holding `musetalk/`); its modules need librosa
and einops (`pip install librosa einops`) and torchvision's transforms. MODELS is a MuseTalk models/ folder;
without it one is written with random weights at the published sizes (tools/musetalk_checkpoint.py, ~1.1 GB).
Nothing is downloaded. Everything runs in fp32 on the CPU.

What is compared (MuseTalk's modules imported one by one; nothing of theirs is stubbed):
1. audio: `AudioProcessor.get_audio_feature` + `get_whisper_chunk` (fps 25, padding 2/2, their WhisperModel)
   against dhgen's worker `audio_features` + `conditioning`: the whisper windows, max abs difference;
2. faces: for crops cut from the avatar at dhgen's face boxes (their `inference.py` cut: frame[y1:y2, x1:x2]
   resized to 256 x 256 with LANCZOS4), `VAE.get_latents_for_unet` -> `PositionalEncoding` ->
   `UNet.model(..., timestep 0)` -> `VAE.decode_latents`, with diffusers' `DiagonalGaussianDistribution.sample`
   replaced by its mean (MuseTalk samples; dhgen reads the mean), against dhgen's `predict`: mean abs
   difference (target <= 1/255) and PSNR (target >= 40 dB) of the generated 256 x 256 faces. Their faces with
   their own sampling are measured too, for scale;
3. face parsing: their `BiSeNet` (musetalk/utils/face_parsing/model.py) with the same weight files: the key
   layouts, the class scores' max abs difference, and the "jaw" mask of their `FaceParsing` against dhgen's
   `jaw_region` on the same 512 x 512 canvas (share of equal pixels).

On a CPU build of torch, torchvision's PyPI wheel does not import (its C++ ops are built for CUDA). Pass
--torchvision with the folder of that wheel's unpacked `torchvision/` package: its package `__init__` (which
registers those ops) is bypassed and its `transforms` run as shipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import math
import os
import sys
import tempfile
import time
import types
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
FPS = 25  # MuseTalk truncates fps with int(): compare at a whole rate
FIRST_FRAME = 10  # compare faces from this video frame on (speech, not the clip's first silence)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--musetalk", type=Path, required=True, help="a TMElyralab/MuseTalk checkout")
    p.add_argument("--checkpoint", type=Path, help="a MuseTalk models/ folder (default: random, full size)")
    p.add_argument("--torchvision", type=Path, help="unpacked torchvision wheel, when `import torchvision` fails")
    p.add_argument("--crops", type=int, default=4)
    p.add_argument("--audio", type=Path, default=FIXTURES / "speech.wav", help="16 kHz mono WAV")
    p.add_argument("--avatar", type=Path, default=FIXTURES / "carphone.mp4")
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def use_torchvision_source(folder: Path | None) -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a CUDA build of torchvision on a CPU torch raises RuntimeError
        if folder is None:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        shell = types.ModuleType("torchvision")
        shell.__path__ = [str(Path(folder) / "torchvision")]
        shell.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
        shell.__spec__.submodule_search_locations = shell.__path__
        sys.modules["torchvision"] = shell


@contextlib.contextmanager
def working_dir(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def mean_instead_of_sample():
    """Make diffusers' posterior `sample()` return its mean: MuseTalk's `encode_latents` runs unchanged."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    original = DiagonalGaussianDistribution.sample
    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mean
    return lambda: setattr(DiagonalGaussianDistribution, "sample", original)


# --- 1. audio -----------------------------------------------------------------------------------------------------


def compare_audio(models: Path, wav: Path, predictor, family) -> tuple[list[str], np.ndarray]:
    from musetalk.utils.audio_processor import AudioProcessor
    from transformers import WhisperModel

    from dhgen.audio import load_audio

    whisper_dir = models / "whisper"
    processor = AudioProcessor(feature_extractor_path=str(whisper_dir))
    whisper = WhisperModel.from_pretrained(str(whisper_dir)).eval()
    with torch.no_grad():
        features, length = processor.get_audio_feature(str(wav))
        theirs = processor.get_whisper_chunk(features, "cpu", torch.float32, whisper, length, fps=FPS).numpy()

    import librosa

    samples = load_audio(wav).samples
    their_samples, _ = librosa.load(str(wav), sr=16000)
    ours_all = family.conditioning(predictor.audio_features(samples), Fraction(FPS), len(theirs))
    ours = ours_all[list(range(len(theirs)))]
    lines = [
        f"audio: {wav.name}, {len(samples)} samples; decoded samples max abs diff (dhgen PyAV vs librosa) "
        f"{np.abs(samples - their_samples).max() if len(samples) == len(their_samples) else 'lengths differ'}",
        f"whisper windows: {theirs.shape} (frames, 10 steps x 5 states, 384); "
        f"max abs diff {np.abs(ours - theirs).max():.3g} (largest value {np.abs(theirs).max():.3g})",
    ]
    return lines, theirs


# --- 2. faces -----------------------------------------------------------------------------------------------------


def avatar_crops(avatar: Path, family, n: int) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """The first n avatar frames with a face, cut at dhgen's face box as MuseTalk's inference.py cuts."""
    from dhgen.avatar import iter_frames, probe_avatar
    from dhgen.face import track_faces

    info = probe_avatar(avatar)
    track = track_faces(info, n)
    crops, rects = [], []
    for index, frame in iter_frames(info, n, "loop"):
        rect = family.crop_rect(track.boxes[index], info.width, info.height)
        x1, y1, x2, y2 = rect
        crops.append(cv2.resize(frame[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_LANCZOS4))
        rects.append(rect)
    return crops, rects


def their_faces(models: Path, crops, chunks: torch.Tensor) -> np.ndarray:
    """MuseTalk's own modules, as scripts/inference.py chains them (fp32, CPU)."""
    from musetalk.models.unet import PositionalEncoding, UNet
    from musetalk.models.vae import VAE

    vae = VAE(model_path=str(models / "sd-vae"), use_float16=False)
    unet = UNet(
        unet_config=str(models / "musetalkV15" / "musetalk.json"),
        model_path=str(models / "musetalkV15" / "unet.pth"),
        device=torch.device("cpu"),
    )
    pe = PositionalEncoding(d_model=384)
    with torch.no_grad():
        latents = torch.cat([vae.get_latents_for_unet(crop) for crop in crops])
        audio = pe(chunks)
        predicted = unet.model(latents, torch.tensor([0]), encoder_hidden_states=audio).sample
        return vae.decode_latents(predicted)


def face_stats(ours: np.ndarray, theirs: np.ndarray) -> str:
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    mse = float((diff**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return (
        f"mean abs diff {diff.mean():.4f} levels ({diff.mean() / 255:.2e} of full scale), max {diff.max():.0f}, "
        f"PSNR {psnr:.1f} dB"
    )


# --- 3. face parsing ----------------------------------------------------------------------------------------------


def compare_parser(models: Path, predictor, crop: np.ndarray) -> list[str]:
    from musetalk.utils.face_parsing import FaceParsing
    from PIL import Image

    from dhgen.models.musetalk.masks import jaw_region, parser_canvas

    with working_dir(models.parent):  # FaceParsing reads ./models/face-parse-bisent/... relative to the cwd
        theirs = FaceParsing(left_cheek_width=90, right_cheek_width=90)
    published = torch.load(models / "face-parse-bisent" / "79999_iter.pth", weights_only=True)
    canvas = parser_canvas(crop)
    x = theirs.preprocess(Image.fromarray(canvas)).unsqueeze(0)
    with torch.no_grad():
        their_scores = theirs.net(x)[0]
        our_scores = predictor.parser(x)
        their_mask = np.array(theirs(Image.fromarray(canvas), mode="jaw"))
        our_mask = jaw_region(predictor.parser.labels(torch.from_numpy(canvas)[None])[0].numpy())
    ours_keys = set(predictor.parser.state_dict())
    used = {k for k in published if not k.startswith(("conv_out16.", "conv_out32."))}
    return [
        f"BiSeNet keys: MuseTalk's module {len(theirs.net.state_dict())}, published file {len(published)}, "
        f"identical sets: {set(theirs.net.state_dict()) == set(published)}; dhgen's {len(ours_keys)} = published "
        f"less the auxiliary heads: {ours_keys == used}",
        f"class scores (512 x 512 canvas): max abs diff {(our_scores - their_scores).abs().max().item():.3g} "
        f"(largest {their_scores.abs().max().item():.3g})",
        f"jaw mask: {np.mean(our_mask == their_mask) * 100:.3f} % of pixels equal "
        f"({np.mean(their_mask > 0) * 100:.1f} % of the canvas in their mask)",
    ]


# --- driver -------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(args.musetalk.resolve()))
    sys.path.insert(0, str(REPO / "tools"))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="musetalk-same-") as tmp:
        models = args.checkpoint
        if models is None:
            from musetalk_checkpoint import write_checkpoint

            models = write_checkpoint(Path(tmp) / "models", "full")
        lines = run(models.resolve(), args)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


def run(models: Path, args) -> list[str]:
    from dhgen.models import CropBatch, get_family

    started = time.perf_counter()
    family = get_family("musetalk")
    family.check_checkpoint(models)
    predictor = family.load(models, "cpu", "float32")  # diffusers and transformers imported, torchvision not
    use_torchvision_source(args.torchvision)  # after them: their "is torchvision installed" checks have run
    lines = [f"# dhgen musetalk vs MuseTalk's modules ({models}; fp32, CPU, torch {torch.__version__})"]
    audio_lines, chunks = compare_audio(models, args.audio, predictor, family)
    lines += audio_lines
    frames = list(range(FIRST_FRAME, FIRST_FRAME + args.crops))
    crops, _ = avatar_crops(args.avatar, family, args.crops)
    ours = predictor.predict(CropBatch(np.stack(crops), np.stack(crops), chunks[frames])).patches
    restore = mean_instead_of_sample()
    theirs = their_faces(models, crops, torch.from_numpy(chunks[frames]))
    restore()
    sampled = their_faces(models, crops, torch.from_numpy(chunks[frames]))
    lines.append(f"faces ({len(crops)} crops of {args.avatar.name}, audio frames {frames[0]}-{frames[-1]}):")
    lines.append(f"  dhgen vs MuseTalk with the posterior mean: {face_stats(ours, theirs)}")
    lines.append(f"  dhgen vs MuseTalk as shipped (a posterior sample): {face_stats(ours, sampled)}")
    saturated = np.mean((theirs == 0) | (theirs == 255))
    spread = f"values {theirs.min()}-{theirs.max()}, std {theirs.std():.1f}, {saturated:.1%} at 0 or 255"
    lines.append(f"  their faces: {spread}")
    if predictor.parser is not None:
        lines += compare_parser(models, predictor, crops[0])
    lines.append(f"took {time.perf_counter() - started:.0f} s")
    return lines


if __name__ == "__main__":
    sys.exit(main())
