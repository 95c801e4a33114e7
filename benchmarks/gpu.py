"""GPU benchmark (issue 5): the model's speed, the encoder's ceiling, and how close dhgen gets to that ceiling.

Run on a bare GPU box from a checkout (torch present): whatever else dhgen needs that is missing there (its
pyproject dependencies, and dhgen's own registration: the model families are entry points) is installed first
from a wheelhouse carried with the checkout, without a network (`benchmarks/wheelhouse.sh` fills `.whl/`):

    PYTHONPATH=. python benchmarks/gpu.py --out bench-results/gpu.txt [--wheelhouse .whl]
    PYTHONPATH=. python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke.txt     # CPU, tiny sizes: it runs end to end

One run, under 5 minutes with the defaults, measures:
1. model only: frames/s of wav2lip (random weights) and mouthwarp at batch 32 / 128 / 512 with fp16 autocast,
   as the forward alone (tensors on the GPU) and through `Predictor.predict` (numpy in and out, copies included);
2. the ceiling: aggregate frames/s of N concurrent transcode-only writers (decode the avatar, encode with the
   encoder `--encoder auto` takes on this box, veryfast crf 20, + AAC through dhgen.writer.VideoWriter) at 720p
   and 1080p;
3. dhgen: aggregate frames/s of `dhgen render --jobs N` over N jobs with --model wav2lip and with mouthwarp, and
   the ratio to the ceiling at the same size (target >= 0.85).
The face cache is filled before the dhgen runs (a batch that starts cold detects once per avatar anyway).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO  # noqa: E402  (common imports PyAV lazily: it may not be installed yet)

TARGET = 0.85


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dhgen GPU benchmark (see the module docstring)")
    p.add_argument("--out", type=Path, required=True, help="write the report (a Markdown table) here")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, short runs: check the script works")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda; cpu with --smoke)")
    p.add_argument("--jobs", type=int, default=None, help="N concurrent jobs/writers (default: CPU cores / 2)")
    p.add_argument("--seconds", type=float, default=None, help="speech per job (default 30; 2 with --smoke)")
    p.add_argument("--sizes", default=None, help="comma-separated sizes (default 720p,1080p)")
    p.add_argument("--batches", default=None, help="model batch sizes (default 32,128,512)")
    p.add_argument("--models", default="wav2lip,mouthwarp", help="models to run (default wav2lip,mouthwarp)")
    p.add_argument("--writer-threads", type=int, default=0, help="x264 threads per ceiling writer (0: x264 picks)")
    p.add_argument("--wheelhouse", type=Path, default=None, help="wheels of what is missing (default: REPO/.whl)")
    p.add_argument("--timeout", type=float, default=240, help="seconds any one measured run may take")
    args = p.parse_args(argv)
    smoke = args.smoke
    args.device = args.device or ("cpu" if smoke else "cuda")
    args.jobs = args.jobs or (2 if smoke else max(2, (os.cpu_count() or 4) // 2))
    args.seconds = args.seconds or (2.0 if smoke else 30.0)
    args.sizes = [s for s in (args.sizes or ("320x180,480x270" if smoke else "720p,1080p")).split(",") if s]
    args.batches = [int(b) for b in (args.batches or ("4,8" if smoke else "32,128,512")).split(",") if b]
    args.models = [m for m in args.models.split(",") if m]
    args.model_seconds = 0.5 if smoke else 2.0
    return args


def requirements() -> list[str]:
    """dhgen's own dependencies, by distribution name, from pyproject.toml (read without tomllib: Python 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    return [re.split(r"[<>=!~;\[ ]", item, maxsplit=1)[0] for item in re.findall(r'"([^"]+)"', block)]


def ensure_dependencies(wheelhouse: Path | None) -> str:
    """Install from `wheelhouse` (no network) each dependency of dhgen that is missing here, and dhgen itself when
    it is not installed (its model families are entry points). Returns PyAV's version."""
    wheelhouse = wheelhouse or REPO / ".whl"
    missing = [name for name in [*requirements(), "dhgen"] if not _installed(name)]
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse), *missing]
        print("installing what is missing:", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"cannot install {', '.join(missing)} from {wheelhouse}: fill it with benchmarks/wheelhouse.sh")
        importlib.invalidate_caches()
    import av

    return av.__version__


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


# --- sections ---------------------------------------------------------------------------------------------------


def bench_models(args, checkpoint: Path | None) -> str:
    from common import load_model, model_fps, table

    rows = []
    for name in args.models:
        if name == "wav2lip" and checkpoint is None:
            rows.append([name, "-", "skipped: dhgen has no wav2lip model", "", ""])
            continue
        predictor = load_model(name, args.device, checkpoint, max(args.batches))
        for batch in args.batches:
            fwd = model_fps(predictor, name, batch, args.model_seconds, forward_only=True)
            full = model_fps(predictor, name, batch, args.model_seconds)
            rows.append([name, batch, f"{fwd:,.0f}", f"{full:,.0f}", _precision(predictor, name)])
        del predictor
        _free_cuda()
    headers = ["model", "batch", "forward frames/s", "predict() frames/s (numpy in/out)", "precision"]
    return table(f"1. model only on {args.device}", headers, rows)


def _precision(predictor, name: str) -> str:
    from dhgen.models import get_family

    if get_family(name).backend == "numpy":
        return "fp32 numpy/OpenCV on the CPU (on every box)"
    if predictor.dtype != "float16":
        return "fp32"
    return "fp16 autocast" if getattr(predictor, "_autocast_fp16", False) else "fp16 weights"


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_ceiling(args, inputs: dict) -> tuple[str, dict[str, float]]:
    from common import child_env, run_many, table, transcode_cmd

    rows, fps = [], {}
    for size, (avatar, speech, frames, tmp) in inputs.items():
        cmds = [
            transcode_cmd(avatar, frames, [(speech, tmp / f"w{i}.mp4")], args.writer_threads) for i in range(args.jobs)
        ]
        runs = [r.check() for r in run_many(cmds, child_env(), timeout_s=args.timeout)]
        wall = max(r.wall_s for r in runs)
        fps[size] = args.jobs * frames / wall
        rows.append(
            [size, args.jobs, args.jobs * frames, f"{wall:.1f}", f"{fps[size]:,.0f}", f"{fps[size] / args.jobs:.0f}"]
        )
    headers = ["size", "writers", "frames", "wall s", "aggregate frames/s", "per writer"]
    threads = args.writer_threads or "auto"
    title = f"2. ceiling: N concurrent transcode-only writers ({_auto_encoder()} veryfast crf 20, threads {threads})"
    return table(title, headers, rows), fps


def _auto_encoder() -> str:
    """The encoder `--encoder auto` takes on this box (the writers of the ceiling and dhgen's jobs use it)."""
    from dhgen.encoders import resolve_encoder
    from dhgen.options import EncodeOptions

    resolved = resolve_encoder(EncodeOptions())
    return f"{resolved.name}, {resolved.reason}"


def bench_dhgen(args, inputs: dict, ceiling: dict[str, float], checkpoint: Path | None) -> str:
    from common import check_dhgen, child_env, dhgen_cmd, job_span_fps, run_timed, table, write_manifest

    rows = []
    for size, (avatar, speech, _, tmp) in inputs.items():
        for name in args.models:
            if name == "wav2lip" and checkpoint is None:
                rows.append([size, name, "-", "-", "-", "skipped: dhgen has no wav2lip model", "-", "-", "-"])
                continue
            out = Path(tempfile.mkdtemp(prefix=f"dhgen-{name}-", dir=tmp))
            manifest = write_manifest(out.with_suffix(".csv"), [(f"j{i}", speech, avatar) for i in range(args.jobs)])
            model = ["--model", name] + (["--checkpoint", str(checkpoint)] if name == "wav2lip" else [])
            cmd = dhgen_cmd(str(manifest), "--out", str(out), "--jobs", str(args.jobs), "--device", args.device, *model)
            run = run_timed(cmd, child_env(XDG_CACHE_HOME=str(tmp / "xdg")), timeout_s=args.timeout)
            done = check_dhgen(run, out)
            fps = done / run.wall_s
            ratio = fps / ceiling[size] if size in ceiling else float("nan")
            verdict = "ok" if ratio >= TARGET else "below target"
            span = job_span_fps(out)
            rows.append(
                [
                    size,
                    name,
                    args.jobs,
                    done,
                    f"{run.wall_s:.1f}",
                    f"{fps:,.0f}",
                    f"{span:,.0f}",
                    f"{ratio:.2f}",
                    verdict,
                ]
            )
    headers = [
        "size",
        "model",
        "jobs",
        "frames",
        "wall s",
        "aggregate frames/s",
        "frames/s first job start to last job end",
        "ratio to ceiling (wall)",
        f">= {TARGET}",
    ]
    return table(f"3. dhgen render --jobs {args.jobs} --device {args.device}, warm face cache", headers, rows)


# --- driver -----------------------------------------------------------------------------------------------------


def make_inputs(args, tmp: Path) -> dict:
    """Per size: (avatar clip, speech, frames per job, a working folder with a filled face cache)."""
    from common import make_avatar, make_speech, prime_face_cache, size_of, speech_frames

    speech = make_speech(tmp / "speech.wav", args.seconds)
    inputs = {}
    for size in args.sizes:
        folder = tmp / size
        folder.mkdir()
        avatar = make_avatar(folder / "avatar.mp4", *size_of(size))
        prime_face_cache(avatar, folder / "xdg")
        inputs[size] = (avatar, speech, speech_frames(args.seconds), folder)
    return inputs


def header(args, av_version: str) -> str:
    import torch

    if args.device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(args.device))
    else:
        gpu = "no GPU used"
    mode = "SMOKE RUN (CPU, tiny sizes: the numbers mean nothing)\n\n" if args.smoke else ""
    return (
        f"# dhgen GPU benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n{mode}"
        f"{platform.node()}: {gpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}, torch "
        f"{torch.__version__}, PyAV {av_version}\n"
        f"N = {args.jobs} jobs / writers, {args.seconds:g} s of speech each, avatar 3 s 25 fps ping-ponged, "
        f"sizes {', '.join(args.sizes)}\n"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    av_version = ensure_dependencies(args.wheelhouse)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("CUDA is not available here: run with --smoke (CPU, tiny sizes) or on a GPU box")
    from common import run_sections, write_random_wav2lip

    started = time.perf_counter()
    parts = [header(args, av_version)]
    print(parts[0], flush=True)
    with tempfile.TemporaryDirectory(prefix="dhgen-gpu-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = write_random_wav2lip(tmp / "wav2lip-random.pth") if "wav2lip" in args.models else None
        inputs = make_inputs(args, tmp)
        ceiling: dict[str, float] = {}

        def ceiling_section() -> str:
            text, fps = bench_ceiling(args, inputs)
            ceiling.update(fps)
            return text

        sections = [
            ("models", lambda: bench_models(args, checkpoint)),
            ("ceiling", ceiling_section),
            ("dhgen", lambda: bench_dhgen(args, inputs, ceiling, checkpoint)),
        ]
        return run_sections(sections, parts, args.out, started)


if __name__ == "__main__":
    sys.exit(main())
