"""MuseTalk 1.5's own loop, for the musetalk section of benchmarks/cpu.py: its scripts/inference.py without mmpose.

    python benchmarks/musetalk_harness.py --musetalk SRC --models MODELS --audio WAV --avatar IMAGE_OR_VIDEO \
        --boxes BOXES.json --out OUT.mp4 [--torchvision TV_SRC] [--fps 25] [--batch-size 8]

One task, step by step as inference.py runs it, through MuseTalk's own modules (VAE, UNet, PositionalEncoding,
AudioProcessor, FaceParsing, get_image, datagen): a video's frames written as PNGs by ffmpeg and read back (an
image is used as it is); whisper features and chunks; the VAE latents of every avatar frame; the frame and
latent lists cycled forward then backward; batches of `--batch-size` through the UNet (timestep 0, positional
encoding) and the VAE decoder; each frame resized into its box and pasted by `get_image` (face parsing, jaw mode,
cheek widths 90), written as a PNG; then ffmpeg to H.264 (crf 18) and a second ffmpeg to add the audio.

The one change: face boxes come from `--boxes` (x1, y1, x2, y2 per avatar frame, the bottom without the extra
margin that inference.py adds), as its `--use_saved_coord` path reads them, instead of mmpose's landmarks
(mmpose and its S3FD download are not needed). fp32 on the CPU, as inference.py without --use_float16.
--torchvision: see tools/musetalk_sameness.py.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
EXTRA_MARGIN = 10  # inference.py's --extra_margin for v15


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--musetalk", type=Path, required=True)
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--audio", type=Path, required=True)
    p.add_argument("--avatar", type=Path, required=True)
    p.add_argument("--boxes", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--torchvision", type=Path)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=8)
    return p.parse_args(argv)


def load(args):
    """MuseTalk's modules and models, as inference.py's main() sets them up (fp32, CPU)."""
    from transformers import WhisperModel

    sys.path.insert(0, str(REPO / "tools"))
    from musetalk_sameness import use_torchvision_source

    use_torchvision_source(args.torchvision)  # after transformers: see tools/musetalk_sameness.py
    sys.path.insert(0, str(args.musetalk.resolve()))
    from musetalk.models.unet import PositionalEncoding, UNet
    from musetalk.models.vae import VAE
    from musetalk.utils.audio_processor import AudioProcessor
    from musetalk.utils.face_parsing import FaceParsing

    models = args.models.resolve()
    vae = VAE(model_path=str(models / "sd-vae"))
    unet = UNet(str(models / "musetalkV15" / "musetalk.json"), str(models / "musetalkV15" / "unet.pth"), device="cpu")
    pe = PositionalEncoding(d_model=384)
    processor = AudioProcessor(feature_extractor_path=str(models / "whisper"))
    whisper = WhisperModel.from_pretrained(str(models / "whisper")).eval().requires_grad_(False)
    cwd = os.getcwd()
    os.chdir(models.parent)  # FaceParsing reads ./models/face-parse-bisent/...
    try:
        fp = FaceParsing(left_cheek_width=90, right_cheek_width=90)
    finally:
        os.chdir(cwd)
    return vae, unet, pe, processor, whisper, fp


def frames_of(avatar: Path, work: Path) -> list[np.ndarray]:
    if avatar.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return [cv2.imread(str(avatar))]
    subprocess.run(["ffmpeg", "-v", "fatal", "-i", str(avatar), "-start_number", "0", f"{work}/%08d.png"], check=True)
    return [cv2.imread(p) for p in sorted(glob.glob(str(work / "*.png")))]


@torch.no_grad()
def main(argv=None) -> int:
    args = parse_args(argv)
    vae, unet, pe, processor, whisper, fp = load(args)
    from musetalk.utils.blending import get_image
    from musetalk.utils.utils import datagen

    with tempfile.TemporaryDirectory(prefix="musetalk-harness-") as tmp:
        work, results = Path(tmp) / "frames", Path(tmp) / "results"
        work.mkdir()
        results.mkdir()
        frame_list = frames_of(args.avatar, work)
        features, length = processor.get_audio_feature(str(args.audio))
        chunks = processor.get_whisper_chunk(features, "cpu", unet.model.dtype, whisper, length, fps=args.fps)
        coords = [tuple(box) for box in json.loads(args.boxes.read_text())][: len(frame_list)]
        latents = []
        for (x1, y1, x2, y2), frame in zip(coords, frame_list, strict=True):
            y2 = min(y2 + EXTRA_MARGIN, frame.shape[0])
            crop = cv2.resize(frame[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_LANCZOS4)
            latents.append(vae.get_latents_for_unet(crop))
        frame_cycle, coord_cycle = frame_list + frame_list[::-1], coords + coords[::-1]
        latent_cycle = latents + latents[::-1]
        faces = []
        for whisper_batch, latent_batch in datagen(chunks, latent_cycle, args.batch_size, 0, "cpu"):
            audio = pe(whisper_batch)
            predicted = unet.model(latent_batch.to(unet.model.dtype), torch.tensor([0]), encoder_hidden_states=audio)
            faces.extend(vae.decode_latents(predicted.sample))
        for i, face in enumerate(faces):
            x1, y1, x2, y2 = coord_cycle[i % len(coord_cycle)]
            frame = copy.deepcopy(frame_cycle[i % len(frame_cycle)])
            y2 = min(y2 + EXTRA_MARGIN, frame.shape[0])
            face = cv2.resize(face.astype(np.uint8), (x2 - x1, y2 - y1))
            combined = get_image(frame, face, [x1, y1, x2, y2], mode="jaw", fp=fp)
            cv2.imwrite(f"{results}/{str(i).zfill(8)}.png", combined)
        video = Path(tmp) / "temp.mp4"
        encode = ["ffmpeg", "-y", "-v", "warning", "-r", str(args.fps), "-f", "image2", "-i", f"{results}/%08d.png"]
        subprocess.run([*encode, "-vcodec", "libx264", "-vf", "format=yuv420p", "-crf", "18", str(video)], check=True)
        mux = ["ffmpeg", "-y", "-v", "warning", "-i", str(args.audio), "-i", str(video), str(args.out)]
        subprocess.run(mux, check=True)
    sys.stdout.write(f"{len(faces)} frames ({math.floor(length / 16000 * args.fps)} by MuseTalk's count)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
