"""Issue 20's checks on a GPU box, in one short run (about 6 minutes): what no CPU box can show.

    bash benchmarks/wheelhouse.sh                                   # here, with a network: fills .whl/
    PYTHONPATH=. python3 benchmarks/device.py --out bench-results/device.md     # there (carry .whl), < 8 min

Sections, each bounded in time, each reported even when another fails:
1. facts: `nvidia-smi -L`, /proc/driver/nvidia/gpus, torch's CUDA build and device count, and the count dhgen
   takes (NVML and CUDA_VISIBLE_DEVICES: `dhgen.gpus`), then `dhgen doctor`;
2. the GPU-marked tests (pytest -m gpu);
3. precision: a random Wav2Lip generator on CUDA, max abs difference of its patches against fp32 on the same GPU:
   eager fp16 autocast, TorchScript with fp16 weights (how dhgen runs it), TorchScript under eager autocast (how it
   ran before);
4. `dhgen render` of 8 jobs with --device cuda and wav2lip (random weights): workers per GPU, incidents, each
   record's model device/dtype and encoder (NVENC's gpu), then one job rendered twice and `--resume --verify`
   (the frames digest must not change);
5. `benchmarks/gpu.py` with short settings (its table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, run_sections  # noqa: E402


def sh(cmd: list[str], timeout: float = 120, **kw) -> str:
    """A command's output (stdout and stderr) and exit status, as report text; never raises."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"$ {' '.join(map(str, cmd))}\n{type(exc).__name__}: {exc}\n"
    return f"$ {' '.join(map(str, cmd))}  (exit {done.returncode})\n{done.stdout}{done.stderr}"


def facts() -> str:
    code = (
        "import torch; from dhgen.gpus import visible_gpus; "
        "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count(), "
        "[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]); print('dhgen', visible_gpus())"
    )
    parts = [sh(["nvidia-smi", "-L"]), sh(["ls", "/proc/driver/nvidia/gpus"]), sh([sys.executable, "-c", code])]
    parts.append(sh([sys.executable, "-m", "dhgen.cli", "doctor"], timeout=180))
    return "## 1. facts\n\n```\n" + "\n".join(parts) + "```\n"


def gpu_tests() -> str:
    files = ["tests/test_torch_backend.py", "tests/test_wav2lip.py", "tests/test_serving.py", "tests/test_gpus.py"]
    out = sh([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files], timeout=300)
    return "## 2. GPU-marked tests\n\n```\n" + out[-6000:] + "```\n"


def precision() -> str:
    import numpy as np
    import torch

    from dhgen.models import CropBatch
    from dhgen.models.torch_backend import TorchPredictor
    from dhgen.models.wav2lip.network import Wav2Lip, Wav2LipModel, load_predictor

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (64, 96, 96, 3), dtype=np.uint8)
    batch = CropBatch(crops, crops[::-1].copy(), rng.uniform(-4, 4, (64, 80, 16)).astype(np.float32))
    generator = Wav2Lip().eval()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "w.pt"
        torch.jit.script(generator).save(str(script))
        fp32 = load_predictor(script, "cuda", "float32").predict(batch).patches.astype(int)
        runs = {
            "eager, fp16 autocast": TorchPredictor("wav2lip", 96, Wav2LipModel(generator).cuda(), "cuda", "float16"),
            "TorchScript, fp16 weights (dhgen now)": load_predictor(script, "cuda", "float16"),
            "TorchScript under eager autocast (before)": TorchPredictor(
                "wav2lip", 96, Wav2LipModel(torch.jit.load(str(script), map_location="cuda")), "cuda", "float16"
            ),
        }
        rows = []
        for name, predictor in runs.items():
            diff = np.abs(predictor.predict(batch).patches.astype(int) - fp32)
            rows.append(f"| {name} | {diff.max()} | {diff.mean():.4f} |")
    head = "| run | max abs diff vs fp32 | mean abs diff |\n|---|---|---|\n"
    return "## 3. precision (64 random crops, random Wav2Lip generator, cuda)\n\n" + head + "\n".join(rows) + "\n"


def render_jobs(jobs: int, device: str) -> str:
    from common import child_env, dhgen_cmd, make_avatar, make_speech, write_manifest, write_random_wav2lip

    with tempfile.TemporaryDirectory(prefix="dhgen-device-") as tmp:
        tmp = Path(tmp)
        avatar, speech = make_avatar(tmp / "avatar.mp4", 854, 480), make_speech(tmp / "speech.wav", 6.0)
        checkpoint = write_random_wav2lip(tmp / "random.pth")
        manifest = write_manifest(tmp / "jobs.csv", [(f"j{i}", speech, avatar) for i in range(jobs)])
        model = ["--model", "wav2lip", "--checkpoint", str(checkpoint), "--device", device, "--progress", "json"]
        env = child_env(XDG_CACHE_HOME=str(tmp / "xdg"))
        out = tmp / "out"
        t0 = time.perf_counter()
        done = subprocess.run(
            dhgen_cmd(str(manifest), "--out", str(out), "--jobs", str(jobs), *model),
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        text = [f"exit {done.returncode}, {wall:.1f} s", *_summary(done.stdout, out / "results.jsonl")]
        one = write_manifest(tmp / "one.csv", [("again", speech, avatar)])
        digests = []
        for attempt in ("first", "second"):
            run_out = tmp / attempt
            cmd = dhgen_cmd(str(one), "--out", str(run_out), *model)
            subprocess.run(cmd, capture_output=True, timeout=180, env=env)
            digests.append(_records(run_out / "results.jsonl")[0].get("frames_digest"))
        text.append(f"one job rendered twice: digests {'EQUAL' if digests[0] == digests[1] else 'DIFFER'} {digests}")
        verify = subprocess.run(
            dhgen_cmd(str(manifest), "--out", str(out), "--jobs", str(jobs), "--resume", "--verify", *model),
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        text.append(f"--resume --verify of the {jobs} jobs: exit {verify.returncode} (0: every digest matched)")
        text.append(verify.stderr[-2000:])
    return f"## 4. dhgen render of {jobs} jobs, --device {device}, wav2lip\n\n```\n" + "\n".join(text) + "\n```\n"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else [{}]


def _summary(events_text: str, log: Path) -> list[str]:
    events = [json.loads(line) for line in events_text.splitlines() if line.startswith("{")]
    workers = Counter(e["device"] for e in events if e.get("event") == "worker_started")
    lines = [f"workers started per device: {dict(workers)}"]
    lines += [f"incident: {json.dumps(e)[:600]}" for e in events if e.get("event") == "incident"]
    for r in _records(log):
        model, encoder = r.get("model") or {}, r.get("encoder") or {}
        lines.append(
            f"{r.get('job_id')}: {r.get('status')} {model.get('device')} {model.get('dtype')} "
            f"{encoder.get('name')} {encoder.get('settings')} digest {str(r.get('frames_digest'))[:12]}"
        )
    return lines


def gpu_bench(out: Path) -> str:
    cmd = [sys.executable, "benchmarks/gpu.py", "--out", str(out), "--seconds", "8", "--sizes", "720p"]
    cmd += ["--batches", "32,128", "--timeout", "120"]
    text = sh(cmd, timeout=360, cwd=REPO)
    return "## 5. benchmarks/gpu.py (short)\n\n```\n" + text[-6000:] + "```\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="issue 20's GPU checks (see the module docstring)")
    p.add_argument("--out", type=Path, default=Path("bench-results/device.md"))
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--device", default="cuda", help="for section 4 (cpu: try the script on a CPU box)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: facts,tests,precision,render,bench")
    args = p.parse_args(argv)
    from gpu import ensure_dependencies

    ensure_dependencies(None)
    skip = set(args.skip.split(","))
    sections = [
        ("facts", facts),
        ("tests", gpu_tests),
        ("precision", precision),
        ("render", lambda: render_jobs(args.jobs, args.device)),
        ("bench", lambda: gpu_bench(args.out.with_name("gpu.md"))),
    ]
    parts = [f"# dhgen device checks (issue 20), {time.strftime('%Y-%m-%d %H:%M:%S')}\n"]
    return run_sections([s for s in sections if s[0] not in skip], parts, args.out, time.perf_counter())


if __name__ == "__main__":
    sys.exit(main())
