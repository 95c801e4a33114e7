"""The musetalk section of benchmarks/cpu.py: one job with MuseTalk 1.5 at full size, dhgen against MuseTalk's own
loop (benchmarks/musetalk_harness.py: its scripts/inference.py without mmpose), both from a subprocess, wall time
and peak RSS of each process tree measured in the same run.

    .venv/bin/python benchmarks/cpu.py --only musetalk --musetalk-src MUSETALK_SRC [--musetalk-frames 40]
        [--musetalk-models MODELS] [--musetalk-avatar IMAGE_OR_VIDEO] [--torchvision TV_SRC]

Weights: MODELS, or a random full-size folder written first (tools/musetalk_checkpoint.py, ~3.7 GB of fp32
weights). Audio: speech cut to the frame count, as a 16 kHz mono WAV (no resampler differs). Avatar: the still
portrait by default (a "talking photo"); the face boxes MuseTalk's loop uses are dhgen's (both cut the same
crops); dhgen runs with its face cache filled, as MuseTalk's loop runs with saved coordinates. Skipped without a
MuseTalk checkout, its Python packages (librosa, einops) or the ffmpeg command its loop runs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
from common import FIXTURES, REPO, child_env, dhgen_cmd, prime_face_cache, run_timed, table

FPS = 25
TARGET_WALL = 0.5  # issue 15: cached preparation, batching, one encode pass


def add_arguments(p) -> None:
    p.add_argument("--musetalk-src", type=Path, help="a TMElyralab/MuseTalk checkout (the musetalk section)")
    p.add_argument("--musetalk-models", type=Path, help="MuseTalk models/ folder (default: random, full size)")
    p.add_argument("--musetalk-frames", type=int, default=40, help="frames of the musetalk job (default 40)")
    p.add_argument("--musetalk-avatar", type=Path, default=FIXTURES / "portrait.png")
    p.add_argument("--torchvision", type=Path, help="unpacked torchvision wheel (see tools/musetalk_sameness.py)")


def missing(args) -> str | None:
    if args.musetalk_src is None:
        return "no --musetalk-src (a TMElyralab/MuseTalk checkout: MuseTalk's own loop is the baseline)"
    lacking = [m for m in ("diffusers", "transformers", "librosa", "einops") if importlib.util.find_spec(m) is None]
    if lacking:
        return f"MuseTalk's modules need {', '.join(lacking)} (pip install {' '.join(lacking)})"
    if shutil.which("ffmpeg") is None:
        return "MuseTalk's loop runs the ffmpeg command, which is not on PATH"
    return None


def speech_16k(path: Path, frames: int) -> Path:
    """The first frames/25 s of tests/fixtures/speech.wav, as 16 kHz mono int16."""
    from dhgen.audio import load_audio

    samples = load_audio(FIXTURES / "speech.wav").samples[: frames * 16_000 // FPS]
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm.tobytes())
    return path


def saved_boxes(avatar: Path, xdg: Path, path: Path) -> Path:
    """dhgen's face boxes as MuseTalk's saved coordinates: x1, y1, x2, y2 per avatar frame."""
    from dhgen.avatar import probe_avatar
    from dhgen.face import track_faces
    from dhgen.options import FaceOptions

    prime_face_cache(avatar, xdg)
    info = probe_avatar(avatar)
    boxes = track_faces(info, info.n_frames, FaceOptions(cache_dir=xdg / "dhgen")).boxes
    path.write_text(json.dumps([[round(x), round(y), round(x + w), round(y + h)] for x, y, w, h in boxes.tolist()]))
    return path


def bench(inp, args) -> str:
    frames = args.musetalk_frames
    title = f"6. musetalk: one {frames}-frame job, full-size random weights, fp32, CPU (target wall <= {TARGET_WALL})"
    why = missing(args)
    if why:
        return f"## {title}\n\nskipped: {why}\n"
    models = args.musetalk_models
    if models is None:
        sys.path.insert(0, str(REPO / "tools"))
        from musetalk_checkpoint import write_checkpoint

        models = write_checkpoint(inp.tmp / "musetalk" / "models", "full")
    audio = speech_16k(inp.tmp / "musetalk-speech.wav", frames)
    xdg = inp.tmp / "xdg-musetalk"
    boxes = saved_boxes(args.musetalk_avatar, xdg, inp.tmp / "musetalk-boxes.json")
    one_job = ["--audio", str(audio), "--avatar", str(args.musetalk_avatar), "--overwrite", "--progress", "none"]
    one_job += ["--stall-timeout", "3600"]  # one batch of full-size MuseTalk takes minutes on a shared CPU
    model = ["--model", "musetalk", "--checkpoint", str(models), "--device", "cpu"]
    dhgen = run_timed(
        dhgen_cmd(*one_job, "-o", str(inp.tmp / "musetalk-dhgen.mp4"), *model),
        child_env(XDG_CACHE_HOME=str(xdg)),
        sample_memory=True,
    ).check()
    harness = [sys.executable, str(Path(__file__).parent / "musetalk_harness.py"), "--musetalk", str(args.musetalk_src)]
    harness += ["--models", str(models), "--audio", str(audio), "--avatar", str(args.musetalk_avatar)]
    harness += ["--boxes", str(boxes), "--out", str(inp.tmp / "musetalk-theirs.mp4")]
    if args.torchvision:
        harness += ["--torchvision", str(args.torchvision)]
    theirs = run_timed(harness, child_env(), sample_memory=True).check()
    rows = [
        [name, f"{run.wall_s:.1f}", f"{run.cpu_s:.1f}", f"{run.peak_tree_rss_mb:.0f}", f"{run.max_rss_mb:.0f}"]
        for name, run in (("dhgen --model musetalk", dhgen), ("MuseTalk's loop", theirs))
    ]
    text = table(title, ["run", "wall s", "CPU s", "tree peak RSS MB", "largest process MB"], rows)
    return text + (
        f"\nratio dhgen / MuseTalk: wall {dhgen.wall_s / theirs.wall_s:.2f}, "
        f"peak RSS {dhgen.peak_tree_rss_mb / theirs.peak_tree_rss_mb:.2f} (tree), "
        f"{dhgen.max_rss_mb / theirs.max_rss_mb:.2f} (largest process)\n"
    )
