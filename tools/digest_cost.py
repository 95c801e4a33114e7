"""What `frames_digest` costs: CPU ms per frame of the sha256 against the whole writer, at 720p by default.

    .venv/bin/python tools/digest_cost.py [--frames 150] [--width 1280 --height 720] [--encoder libx264] [--grain 4]

The writer's frames are a portrait panning across the frame, with `--grain` (sensor-like noise, std in levels) to
make them as hard to code as camera footage. CPU time is the process's user+sys (every encoder thread included), so
the numbers hold on a busy machine.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
import wave
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from dhgen.options import EncodeOptions
from dhgen.writer import VideoWriter

PORTRAIT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "portrait.png"
FPS = 25


def panning_frames(n: int, width: int, height: int, grain: float = 0.0) -> list[np.ndarray]:
    still = cv2.resize(cv2.imread(str(PORTRAIT)), (width + n, height))
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        frame = still[:, i : i + width].astype(np.float32)
        if grain:
            frame += rng.normal(0, grain, frame.shape).astype(np.float32)
        frames.append(np.ascontiguousarray(np.clip(frame, 0, 255).astype(np.uint8)))
    return frames


def silent_wav(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(bytes(2 * int(16000 * seconds)))
    return path


def cpu_ms_per_frame(action, n: int) -> float:
    start = time.process_time()
    action()
    return (time.process_time() - start) * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--encoder", default="libx264")
    parser.add_argument("--threads", type=int, default=2, help="encoder threads (a job process's share here)")
    parser.add_argument("--grain", type=float, default=0.0, help="noise std added to each frame, in levels")
    args = parser.parse_args()
    frames = panning_frames(args.frames, args.width, args.height, args.grain)
    planes = [cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420) for f in frames]

    def digest_only() -> None:
        digest = hashlib.sha256()
        for yuv in planes:
            digest.update(yuv)

    with tempfile.TemporaryDirectory() as tmp:
        audio = silent_wav(Path(tmp) / "a.wav", args.frames / FPS)
        options = EncodeOptions(encoder=args.encoder, threads=args.threads)

        def write_all() -> None:
            with VideoWriter(Path(tmp) / "o.mp4", args.width, args.height, Fraction(FPS), audio, options) as w:
                for frame in frames:
                    w.write(frame)

        write_all()  # warm-up: first open, page cache
        digest = cpu_ms_per_frame(digest_only, args.frames)
        writer = cpu_ms_per_frame(write_all, args.frames)
    sys.stdout.write(
        f"{args.width}x{args.height}, {args.frames} frames (grain {args.grain:g}), {args.encoder} veryfast, "
        f"{args.threads} threads\n"
        f"sha256 of the yuv420p planes: {digest:.2f} ms CPU per frame\n"
        f"whole writer (digest included): {writer:.2f} ms CPU per frame\n"
        f"digest share of the writer: {100 * digest / writer:.1f} %\n"
    )


if __name__ == "__main__":
    main()
