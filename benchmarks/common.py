"""Shared benchmark code: generated inputs, the transcode-only baseline, measured subprocess runs, tables.

Inputs are made at run time into a temp folder from the committed test fixtures: an avatar clip (the portrait
scaled up into a 16:9 frame with a slow drift and zoom) and speech (tests/fixtures/speech.wav repeated to length).

The baseline ("transcode only") is what a renderer cannot avoid: decode the avatar's frames with PyAV in the same
ping-pong order dhgen uses, convert each to a BGR array, and encode + mux them with the source audio through
`dhgen.writer.VideoWriter` (same libx264 settings, same cv2 BGR->I420 path, same AAC mux). Run it as a process:

    python benchmarks/common.py transcode --avatar A.mp4 --frames 250 --job speech.wav out.mp4 [--job ...]

Needs PyAV, numpy and OpenCV; `dhgen` importable (an installed venv, or `PYTHONPATH=.` in a checkout).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import wave
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
FPS = 25
AVATAR_SECONDS = 3.0  # a short template clip, as users bring: longer outputs ping-pong it
SIZES = {"1080p": (1920, 1080), "720p": (1280, 720), "480p": (854, 480), "360p": (640, 360), "180p": (320, 180)}
DHGEN_MAIN = "from dhgen.cli import main; main()"  # the console script's entry point, without an install


def size_of(name: str) -> tuple[int, int]:
    """'720p' -> (1280, 720); 'WxH' -> (W, H). Sizes are made even (yuv420p)."""
    if name in SIZES:
        return SIZES[name]
    w, _, h = name.lower().partition("x")
    return int(w) // 2 * 2, int(h) // 2 * 2


# --- inputs ---------------------------------------------------------------------------------------------------


def avatar_frame(portrait, t: float, width: int, height: int):
    """The portrait scaled to fill the frame's height, centred, with a drift of ~1.5% and a zoom of +-3%."""
    import cv2
    import numpy as np

    scale = height / portrait.shape[0] * (1.0 + 0.03 * np.sin(2 * np.pi * t + 1.0))
    dx = 0.015 * width * np.sin(2 * np.pi * t)
    dy = 0.008 * height * np.sin(4 * np.pi * t)
    cx, cy = portrait.shape[1] / 2, portrait.shape[0] / 2
    m = np.array([[scale, 0, width / 2 + dx - scale * cx], [0, scale, height / 2 + dy - scale * cy]])
    return cv2.warpAffine(portrait, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def make_avatar(path: Path, width: int, height: int, seconds: float = AVATAR_SECONDS, fps: int = FPS) -> Path:
    """An H.264 avatar clip (yuv420p, crf 18, a keyframe every 2 s) made from tests/fixtures/portrait.png."""
    import av
    import cv2

    portrait = cv2.imread(str(FIXTURES / "portrait.png"))
    n = round(seconds * fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18", "g": str(2 * fps)}
        for i in range(n):
            frame = avatar_frame(portrait, i / n, width, height)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode())
    return path


def make_speech(path: Path, seconds: float) -> Path:
    """tests/fixtures/speech.wav repeated (and cut) to `seconds` long."""
    with wave.open(str(FIXTURES / "speech.wav")) as src:
        params = src.getparams()
        pcm = src.readframes(params.nframes)
    frame_bytes = params.sampwidth * params.nchannels
    need = round(seconds * params.framerate) * frame_bytes
    data = (pcm * (need // len(pcm) + 1))[:need]
    with wave.open(str(path), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(data)
    return path


def speech_frames(seconds: float, fps: int = FPS) -> int:
    """Output frames for `seconds` of audio (dhgen.audio.frame_count's rule)."""
    return max(1, round(seconds * fps))


def write_manifest(path: Path, rows: Sequence[tuple[str, Path, Path]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "audio", "avatar"])
        for job_id, audio, avatar in rows:
            writer.writerow([job_id, str(audio), str(avatar)])
    return path


def write_random_wav2lip(path: Path, seed: int = 0) -> Path | None:
    """A randomly initialised Wav2Lip generator saved as {"state_dict": ...}; None when dhgen has no wav2lip."""
    try:
        import torch

        from dhgen.models.wav2lip.network import Wav2Lip
    except ImportError:
        return None
    torch.manual_seed(seed)
    torch.save({"state_dict": Wav2Lip().state_dict()}, path)
    return path


def export_wav2lip_onnx(pth: Path, path: Path) -> Path:
    """The generator in `pth` exported to ONNX with FaceFusion's I/O names (`source`, `target` -> `output`) and a
    dynamic batch: the same weights under onnxruntime."""
    import warnings

    import torch

    from dhgen.models.wav2lip.network import load_generator

    generator = load_generator(pth, "cpu")
    inputs = (torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 96, 96))
    axes = {name: {0: "batch"} for name in ("source", "target", "output")}
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(
            generator, inputs, str(path), input_names=["source", "target"], output_names=["output"],
            dynamic_axes=axes, dynamo=False,
        )  # fmt: skip
    return path


# --- the transcode-only baseline ------------------------------------------------------------------------------


def _decoded(path: str, threads: int) -> Iterator:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        yield from container.decode(stream)


def pingpong_frames(path: str, n_out: int, threads: int = 0) -> Iterator:
    """n_out BGR frames in ping-pong order (0..n-1, n-2..1, 0..): each forward run decoded from the start, each
    backward run decoded forward into a list of decoder frames and converted as it is yielded in reverse."""
    produced, forward = 0, True
    while produced < n_out:
        if forward:
            frames = _decoded(path, threads)
        else:
            frames = reversed(list(_decoded(path, threads))[1:-1])
        for frame in frames:
            yield frame.to_ndarray(format="bgr24")  # the conversion dhgen.avatar does
            produced += 1
            if produced == n_out:
                return
        forward = not forward


def probe_video(path: str) -> tuple[int, int, Fraction]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height, Fraction(stream.average_rate or FPS)


def transcode(avatar: str, audio: str, out: str, n_frames: int, threads: int = 0) -> int:
    """The baseline for one job: decode + convert + encode + mux, nothing else. Returns frames written."""
    from dhgen.options import EncodeOptions
    from dhgen.writer import VideoWriter

    width, height, fps = probe_video(avatar)
    with VideoWriter(Path(out), width, height, fps, Path(audio), EncodeOptions(threads=threads)) as writer:
        for frame in pingpong_frames(avatar, n_frames):
            writer.write(frame)
        return writer.frames_written


def transcode_cmd(avatar: Path, frames: int, jobs: Sequence[tuple[Path, Path]], threads: int = 0) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "transcode", "--avatar", str(avatar)]
    cmd += ["--frames", str(frames), "--threads", str(threads)]
    for audio, out in jobs:
        cmd += ["--job", str(audio), str(out)]
    return cmd


def dhgen_cmd(*args: str) -> list[str]:
    """`dhgen render ARGS` through the console script's entry point (works without `pip install`)."""
    return [sys.executable, "-c", DHGEN_MAIN, "render", *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for dhgen / baseline processes: the repo on PYTHONPATH, plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


# --- measured runs --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished process (tree): wall time, CPU time, exit status, and memory when sampled."""

    cmd: list[str]
    wall_s: float  # from the (common) start until this process was reaped
    cpu_s: float  # user + system time of the process and every descendant it waited for (wait4)
    returncode: int
    output: str = ""
    max_rss_mb: float = 0.0  # ru_maxrss from wait4: the largest single process of the tree (exact)
    peak_tree_rss_mb: float = 0.0  # highest sum of VmRSS over the process and its descendants (sampled)
    processes: dict[int, tuple[str, float, float]] = field(default_factory=dict)  # pid -> (kind, VmHWM MB, CPU s)

    def check(self) -> Run:
        if self.returncode != 0:
            raise RuntimeError(f"exit {self.returncode}: {' '.join(self.cmd[:6])} ...\n{self.output[-3000:]}")
        return self

    def peak_by_kind(self) -> dict[str, float]:
        """The highest per-process peak RSS (MB) for each kind of process."""
        peaks: dict[str, float] = {}
        for kind, mb, _ in self.processes.values():
            peaks[kind] = max(mb, peaks.get(kind, 0.0))
        return peaks

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds per kind of process, summed (as last sampled: a process's final ~50 ms may be missing)."""
        total: dict[str, float] = {}
        for kind, _, cpu_s in self.processes.values():
            total[kind] = total.get(kind, 0.0) + cpu_s
        return total


def run_timed(
    cmd: list[str], env: dict | None = None, sample_memory: bool = False, timeout_s: float = 0, cwd: Path | None = None
) -> Run:
    """Run `cmd` to completion (see `run_many`)."""
    return run_many([cmd], env, sample_memory, timeout_s, cwd)[0]


def run_many(
    cmds: list[list[str]],
    env: dict | None = None,
    sample_memory: bool = False,
    timeout_s: float = 0,
    cwd: Path | None = None,
) -> list[Run]:
    """Start every command at once (in `cwd`) and wait for all. With `sample_memory`, the RSS of each process tree
    is sampled every 50 ms (Linux /proc); the per-process peaks come from the kernel's VmHWM, so they are exact.
    A process still running after `timeout_s` (0: no limit) is killed (dhgen's children die with it)."""
    interval = 0.05 if sample_memory else 0.005
    files = [tempfile.TemporaryFile("w+") for _ in cmds]
    start = time.perf_counter()
    pairs = zip(cmds, files, strict=True)
    procs = [subprocess.Popen(c, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=cwd) for c, f in pairs]
    samplers = [TreeSampler() for _ in cmds]
    done: dict[int, Run] = {}
    while len(done) < len(procs):
        overdue = timeout_s and time.perf_counter() - start > timeout_s
        for i, proc in enumerate(procs):
            if i in done:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if not pid:
                if overdue:
                    proc.kill()
                elif sample_memory:
                    samplers[i].sample(proc.pid)
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            done[i] = _finished(cmds[i], time.perf_counter() - start, proc.returncode, usage, samplers[i])
        time.sleep(interval)
    for i, f in enumerate(files):
        f.seek(0)
        done[i].output = f.read()
        f.close()
    return [done[i] for i in range(len(procs))]


def _finished(cmd, wall: float, code: int, usage, sampler: TreeSampler) -> Run:
    return Run(
        cmd,
        wall,
        usage.ru_utime + usage.ru_stime,
        code,
        max_rss_mb=usage.ru_maxrss / 1024,
        peak_tree_rss_mb=sampler.peak_sum_kb / 1024,
        processes={pid: (kind, kb / 1024, cpu_s) for pid, (kind, kb, cpu_s) in sampler.seen.items()},
    )


class TreeSampler:
    """Samples the memory and CPU time of a process and its descendants, and labels each process: main, a child
    that loaded torch or onnxruntime (dhgen's inference worker), the multiprocessing resource tracker, or another
    child (a job)."""

    def __init__(self) -> None:
        self.peak_sum_kb = 0
        self.seen: dict[int, tuple[str, int, float]] = {}  # pid -> (kind, VmHWM kB, CPU s at the last sample)
        self._torch: set[int] = set()
        self._ort: set[int] = set()
        self._av: set[int] = set()

    def sample(self, root: int) -> None:
        total = 0
        for pid, cpu_s in _descendants(root):
            status = _status(pid)
            if not status:
                continue
            total += status.get("VmRSS", 0)
            _, hwm, _ = self.seen.get(pid, ("", 0, 0.0))
            self.seen[pid] = (self._kind(pid, root), max(status.get("VmHWM", 0), hwm), cpu_s)
        self.peak_sum_kb = max(self.peak_sum_kb, total)

    def _kind(self, pid: int, root: int) -> str:
        if pid == root:
            return "main"
        if pid not in self._torch and _maps(pid, "libtorch"):
            self._torch.add(pid)
        if pid in self._torch:
            return "worker (torch)"
        if pid not in self._ort and _maps(pid, "onnxruntime"):
            self._ort.add(pid)
        if pid in self._ort:
            return "worker (onnxruntime)"
        if "resource_tracker" in _cmdline(pid):
            return "resource tracker"
        # A job process decodes and encodes with PyAV; a worker serving a numpy model (mouthwarp) never does.
        if pid not in self._av and _maps(pid, "libavcodec"):
            self._av.add(pid)
        return "job (no torch)" if pid in self._av else "worker (no torch)"


_TICKS = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[tuple[int, float]]:
    """(pid, user + system CPU seconds) of `root` and every process below it."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # fields 3.. of proc(5): state, ppid, ...
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in cpu:
            found.append((pid, cpu[pid]))
        todo.extend(children.get(pid, []))
    return found


def _status(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _maps(pid: int, library: str) -> bool:
    """Whether process `pid` has `library` mapped (False once it is gone)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return library in f.read()
    except OSError:
        return False


# --- the model alone -------------------------------------------------------------------------------------------


def random_crop_batch(name: str, batch: int, predictor=None, seed: int = 0):
    """A CropBatch of random crops, with the conditioning family `name` makes of a noisy second of audio (by
    `predictor` for a family that computes its audio features in the worker)."""
    from fractions import Fraction

    import numpy as np

    from dhgen.models import CropBatch, get_family

    family = get_family(name)
    rng = np.random.default_rng(seed)
    size = family.crop_size
    crops = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    samples = (0.1 * rng.standard_normal(16_000 * (batch // 25 + 1))).astype(np.float32)
    features = predictor.audio_features(samples) if family.audio_in_worker else family.audio_features(samples)
    cond = family.conditioning(features, Fraction(25), batch)
    if family.backend == "numpy":  # one reference for the batch, as a job sends it (its geometry is cached)
        return CropBatch(crops, crops[:1].copy(), cond)
    return CropBatch(crops, crops[::-1].copy(), cond)


def model_fps(predictor, name: str, batch: int, seconds: float = 2.0, forward_only: bool = False) -> float:
    """Frames/s of a loaded dhgen predictor at `batch`: `predict()` (numpy in and out, host<->device copies
    included), or with `forward_only` the model's forward on tensors already on the device (in the predictor's
    precision, as `Predictor` runs it). A numpy model (no tensors, no device) has only `predict()`."""

    cb = random_crop_batch(name, batch, predictor)
    if not hasattr(predictor, "model"):
        return _rate(lambda: predictor.predict(cb), batch, seconds, lambda: None)
    import torch

    device = torch.device(predictor.device)
    cuda = device.type == "cuda"
    if forward_only:
        tensors = [torch.from_numpy(a).to(device) for a in (cb.crops, cb.refs, cb.cond)]

        def step():
            with torch.inference_mode(), predictor._autocast():  # the predictor's own precision
                predictor.model(*tensors)
    else:

        def step():
            predictor.predict(cb)

    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    return _rate(step, batch, seconds, sync)


def _rate(step, batch: int, seconds: float, sync) -> float:
    for _ in range(3):
        step()
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += batch
    sync()
    return done / (time.perf_counter() - start)


def load_model(name: str, device: str, checkpoint: Path | None, batch: int):
    from dhgen.models.serving import load_model as load
    from dhgen.options import ModelOptions

    return load(ModelOptions(name=name, checkpoint=checkpoint, device=device, batch_size=batch))


def prime_face_cache(avatar: Path, xdg: Path) -> None:
    """Fill the face cache under `xdg` for `avatar`, as a first dhgen run would (default detector settings)."""
    from dhgen.avatar import probe_avatar
    from dhgen.face import track_faces
    from dhgen.options import FaceOptions

    info = probe_avatar(avatar)
    track_faces(info, info.n_frames, FaceOptions(cache_dir=xdg / "dhgen"))


# --- results --------------------------------------------------------------------------------------------------


def read_results(out_dir: Path) -> list[dict]:
    path = out_dir / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_dhgen(run: Run, out_dir: Path) -> int:
    """Frames dhgen rendered in `out_dir`; raises if the run or any job failed."""
    run.check()
    records = read_results(out_dir)
    failed = [r for r in records if r["status"] != "succeeded"]
    if failed or not records:
        raise RuntimeError(f"dhgen jobs failed: {[r.get('error') for r in failed]}\n{run.output[-2000:]}")
    return sum(r["frames"] for r in records)


def job_span_fps(out_dir: Path) -> float:
    """Frames/s between the first job's start and the last job's end (run start-up and shutdown left out)."""
    from datetime import datetime

    records = read_results(out_dir)
    stamp = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()  # noqa: E731
    span = max(stamp(r["finished_at"]) for r in records) - min(stamp(r["started_at"]) for r in records)
    return sum(r["frames"] for r in records) / max(span, 1e-3)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """'median (min-max)' in seconds."""
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table under a heading line."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([f"## {title}", "", line(cells[0]), rule, *(line(r) for r in cells[1:]), ""])


# --- the baseline as a process --------------------------------------------------------------------------------


def run_sections(sections: Sequence[tuple[str, Callable[[], str]]], parts: list[str], out: Path, started: float) -> int:
    """Run each (name, section) in turn, printing and collecting its report; one failure does not stop the rest.
    Writes all `parts` to `out`; returns 1 if a section failed."""
    failed = False
    for name, section in sections:
        t0 = time.perf_counter()
        try:
            text = section()
        except Exception:  # noqa: BLE001 - one broken section must not hide the others
            failed = True
            text = f"## {name}: FAILED\n\n```\n{traceback.format_exc()[-4000:]}```\n"
        text += f"\n({name}: {time.perf_counter() - t0:.0f} s)\n"
        parts.append(text)
        print(text, flush=True)
    load = os.getloadavg()[0]
    parts.append(f"total {time.perf_counter() - started:.0f} s; load average {load:.2f} at the end\n")
    print(parts[-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    print(f"written to {out}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tc = sub.add_parser("transcode", help="the transcode-only baseline for one or more jobs, one after another")
    tc.add_argument("--avatar", required=True)
    tc.add_argument("--frames", type=int, required=True, help="frames per job")
    tc.add_argument("--threads", type=int, default=0, help="x264 threads (0: x264 picks)")
    tc.add_argument("--job", nargs=2, action="append", metavar=("AUDIO", "OUT"), required=True)
    args = parser.parse_args(argv)
    for audio, out in args.job:
        transcode(args.avatar, audio, out, args.frames, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
