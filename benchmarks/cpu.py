"""CPU benchmark (`make bench`): dhgen against a transcode-only baseline measured in the same run.

    .venv/bin/python benchmarks/cpu.py [--size 480p] [--reps 3]
        [--only sequential,memory,concurrent,wav2lip,ray,serve,musetalk,peer]
        [--musetalk-src MUSETALK_SRC ...: the musetalk section, see benchmarks/musetalk_bench.py]
        [--peer-repo WAV2LIP_CHECKOUT --peer-python PYTHON]   (or $WAV2LIP_REPO, $WAV2LIP_PYTHON: `make bench`)

Sections (targets from issues 2, 3, 5, 10 and 14):
1. sequential: a batch of jobs (`--jobs 1`) vs one baseline process transcoding the same frames (decode the
   avatar in dhgen's ping-pong order, encode + mux through dhgen.writer.VideoWriter), runs alternated, medians.
   Cold = an empty face cache (fresh XDG_CACHE_HOME), warm = a cache filled beforehand. Target wall <= 1.15
   (warm; cold also pays the face detection).
2. memory: peak RSS of the whole process tree for a 3-minute job vs a 10-second job. Target <= 1.2.
3. concurrent: a batch rendered N jobs at once (`--jobs N`) vs N concurrent baseline processes sharing the
   batch. Target wall <= 1.25.
4. wav2lip: a short clip with a randomly initialised generator at a small batch, as a `.pth` (torch) and as the
   same weights exported to ONNX (onnxruntime), alternated with the baseline; frames/s of each (target: ONNX >=
   1.5x torch), the inference worker's peak RSS, and the model's own frames/s at that batch.
5. ray: the concurrent section's batch through the local supervisor and through `--executor ray` against a
   one-node Ray cluster on 127.0.0.1 that is already running (its start-up is timed on its own), alternated;
   wall ratio ray / local (target <= 1.15), and the peak RSS of Ray's own processes (gcs_server, raylet, agents,
   workers and actors) sampled every 50 ms.
6. serve: --serve-jobs short jobs through `dhgen render --jobs N` and through a running `dhgen serve --jobs N`
   (submitted at once), alternated: wall ratio serve / render (target <= 1.1), submit latency p50/p99, and the start
   latency of one job on an idle server (target < 1 s); see benchmarks/service.py.
7. musetalk: one job with MuseTalk 1.5 at full size (random weights) against MuseTalk's own loop, wall and peak
   RSS (benchmarks/musetalk_bench.py; skipped without --musetalk-src). Target wall <= 0.5.
8. peer (only with --peer-repo and --peer-python, or $WAV2LIP_REPO and $WAV2LIP_PYTHON): Wav2Lip's own
   inference.py against dhgen with the ONNX graph and with the .pth, same random weights, 10 s of speech on a
   3 s 720p avatar, one run each, cold face cache; wall, CPU and peak RSS of the process tree as ratios to the
   peer's (targets with ONNX: wall <= 0.07, RSS <= 0.1). benchmarks/peer.py: the peer's stand-in face detector.

dhgen runs through its CLI entry point in a subprocess, as a user runs it. Inputs are generated into a temp
folder. The report is printed and written to bench-results/cpu.txt. The box may be shared: wall times are noisy,
so CPU seconds (user + system of the whole process tree) are reported beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import musetalk_bench  # noqa: E402
from common import (  # noqa: E402
    REPO,
    Run,
    check_dhgen,
    child_env,
    dhgen_cmd,
    export_wav2lip_onnx,
    load_model,
    make_avatar,
    make_speech,
    median,
    prime_face_cache,
    random_crop_batch,
    run_many,
    run_sections,
    run_timed,
    size_of,
    speech_frames,
    spread,
    table,
    transcode_cmd,
    write_manifest,
    write_random_wav2lip,
)
from peer import peer_cmd, prepare_peer  # noqa: E402
from service import bench_serve  # noqa: E402

SECTIONS = ("sequential", "memory", "concurrent", "wav2lip", "ray", "serve", "musetalk", "peer")
TARGET_WALL = 1.25  # concurrent (issue 10: --jobs 2 on 2 cores)
TARGET_SEQUENTIAL = 1.15  # sequential, warm face cache (issue 10: --jobs 1)
TARGET_RSS = 1.2
TARGET_RAY = 1.15
TARGET_ONNX_SPEEDUP = 1.5  # wav2lip frames/s, onnxruntime / torch (issue 14)
TARGET_PEER_WALL, TARGET_PEER_RSS = 0.07, 0.1  # dhgen with the ONNX graph / Wav2Lip's inference.py (issue 14)
W2L_RUNS = {"torch": "dhgen wav2lip .pth (torch)", "onnxruntime": "dhgen wav2lip .onnx (onnxruntime)"}


@dataclass
class Inputs:
    tmp: Path
    avatar: Path
    speech: Path  # --seconds long
    long_speech: Path  # --long-seconds long
    short_speech: Path  # --wav2lip-seconds, for wav2lip
    frames: int  # output frames for `speech`


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dhgen CPU benchmark (see the module docstring)")
    p.add_argument("--size", default="480p", help="avatar size: 360p, 480p, 720p, 1080p or WxH (default 480p)")
    p.add_argument("--jobs", type=int, default=6, help="jobs in the sequential batch (default 6)")
    p.add_argument("--concurrent", type=int, default=2, help="N for the concurrent section (default 2)")
    p.add_argument("--batch", type=int, default=4, help="jobs in the concurrent batch (default 4, a multiple of N)")
    p.add_argument("--seconds", type=float, default=10.0, help="speech per job (default 10)")
    p.add_argument("--long-seconds", type=float, default=180.0, help="the long job of the memory section")
    p.add_argument("--reps", type=int, default=3, help="alternated repetitions per timed comparison (default 3)")
    p.add_argument("--baseline-threads", type=int, default=0, help="x264 threads of the baseline (0: x264 picks)")
    p.add_argument("--wav2lip-batch", type=int, default=8, help="--batch-size for the wav2lip section")
    p.add_argument("--serve-jobs", type=int, default=12, help="jobs of the serve section (default 12)")
    p.add_argument("--serve-seconds", type=float, default=3.0, help="speech per job of the serve section (default 3)")
    musetalk_bench.add_arguments(p)
    p.add_argument("--wav2lip-seconds", type=float, default=4.0, help="speech in the wav2lip section (default 4)")
    p.add_argument(
        "--peer-repo",
        type=Path,
        default=os.environ.get("WAV2LIP_REPO"),
        help="a checkout of github.com/Rudrabha/Wav2Lip, for the peer section (default: $WAV2LIP_REPO)",
    )
    p.add_argument(
        "--peer-python",
        default=os.environ.get("WAV2LIP_PYTHON"),
        help="a Python with Wav2Lip's requirements (librosa<0.10, scipy, torch, cv2) (default: $WAV2LIP_PYTHON)",
    )
    p.add_argument("--peer-seconds", type=float, default=10.0, help="speech in the peer section (default 10)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "cpu.txt", help="report file")
    return p.parse_args(argv)


# --- the sections -----------------------------------------------------------------------------------------------


def dhgen_run(inp: Inputs, rows, name: str, xdg: Path, *extra: str, sample_memory: bool = False) -> tuple[Run, int]:
    """One dhgen CLI run over `rows` into a fresh output folder; returns the run and the frames it rendered."""
    out = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=inp.tmp))
    manifest = write_manifest(out.with_suffix(".csv"), rows)
    cmd = dhgen_cmd(str(manifest), "--out", str(out), *extra)
    run = run_timed(cmd, child_env(XDG_CACHE_HOME=str(xdg)), sample_memory=sample_memory)
    return run, check_dhgen(run, out)


def baseline_cmd(inp: Inputs, audios: list[Path], frames: int, threads: int) -> list[str]:
    out = Path(tempfile.mkdtemp(prefix="base-", dir=inp.tmp))
    return transcode_cmd(inp.avatar, frames, [(a, out / f"{i}.mp4") for i, a in enumerate(audios)], threads)


def rows_for(inp: Inputs, audio: Path, n: int) -> list[tuple[str, Path, Path]]:
    return [(f"job{i}", audio, inp.avatar) for i in range(n)]


def alternate(reps: int, variants: dict) -> dict[str, list[Run]]:
    """Run each variant `reps` times, order reversed every other round (A B C, C B A, ...)."""
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            runs[name].append(variants[name]())
    return runs


def comparison_rows(runs: dict[str, list[Run]], frames: dict[str, int], base: str) -> list[list]:
    base_wall = median([r.wall_s for r in runs[base]])
    base_cpu = median([r.cpu_s for r in runs[base]])
    rows = []
    for name, rs in runs.items():
        wall, cpu = median([r.wall_s for r in rs]), median([r.cpu_s for r in rs])
        paired = median([r.wall_s / b.wall_s for r, b in zip(rs, runs[base], strict=True)])
        rows.append(
            [
                name,
                frames[name],
                spread([r.wall_s for r in rs]),
                f"{cpu:.1f}",
                f"{frames[name] / wall:.1f}",
                f"{wall / base_wall:.2f}",
                f"{paired:.2f}",
                f"{cpu / base_cpu:.2f}",
            ]
        )
    return rows


COMPARISON_HEADERS = [
    "run",
    "frames",
    "wall s, median (min-max)",
    "CPU s",
    "frames/s",
    "wall ratio",
    "paired wall ratio",
    "CPU ratio",
]


def bench_sequential(inp: Inputs, args) -> str:
    n = args.jobs
    rows = rows_for(inp, inp.speech, n)
    warm_xdg = inp.tmp / "xdg-warm"
    dhgen_run(inp, rows[:1], "warm-up", warm_xdg, "--jobs", "1")  # page cache, bytecode, ...

    def dhgen(cold: bool):
        def run() -> Run:
            xdg = Path(tempfile.mkdtemp(prefix="xdg-cold-", dir=inp.tmp)) if cold else warm_xdg  # empty when cold
            return dhgen_run(inp, rows, "seq", xdg, "--jobs", "1")[0]

        return run

    base = lambda: run_timed(  # noqa: E731
        baseline_cmd(inp, [inp.speech] * n, inp.frames, args.baseline_threads), child_env()
    ).check()
    variants = {"baseline (transcode only)": base, "dhgen cold": dhgen(True), "dhgen warm": dhgen(False)}
    runs = alternate(args.reps, variants)
    frames = {name: n * inp.frames for name in runs}
    title = (
        f"1. sequential: {n} jobs x {args.seconds:g} s, --jobs 1, {args.reps} alternated reps "
        f"(target <= {TARGET_SEQUENTIAL} warm)"
    )
    return table(title, COMPARISON_HEADERS, comparison_rows(runs, frames, "baseline (transcode only)"))


def bench_memory(inp: Inputs, args) -> str:
    xdg = inp.tmp / "xdg-warm"
    results = {}
    for label, audio in ((f"{args.seconds:g} s", inp.speech), (f"{args.long_seconds:g} s", inp.long_speech)):
        run, frames = dhgen_run(inp, [("job", audio, inp.avatar)], "mem", xdg, "--jobs", "1", sample_memory=True)
        results[label] = (run, frames)
    rows = []
    for label, (run, frames) in results.items():
        kinds = run.peak_by_kind()
        dominant = max(kinds, key=kinds.get)
        per_kind = "; ".join(f"{k} {v:.0f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        cpu = "; ".join(f"{k} {v:.1f}" for k, v in sorted(run.cpu_by_kind().items(), key=lambda kv: -kv[1]))
        rows.append(
            [
                label,
                frames,
                f"{run.wall_s:.1f}",
                f"{run.peak_tree_rss_mb:.0f}",
                f"{run.max_rss_mb:.0f}",
                dominant,
                per_kind,
                cpu,
            ]
        )
    (short, _), (long, _) = results.values()
    ratio_tree = long.peak_tree_rss_mb / short.peak_tree_rss_mb
    ratio_max = long.max_rss_mb / short.max_rss_mb
    headers = [
        "job",
        "frames",
        "wall s",
        "tree peak RSS MB",
        "largest process MB",
        "dominant",
        "peak RSS MB by process",
        "CPU s by process",
    ]
    title = f"2. memory: one job, --jobs 1, warm cache (target <= {TARGET_RSS})"
    text = table(title, headers, rows)
    return text + (
        f"\nratio long/short: whole tree {ratio_tree:.2f}, largest process {ratio_max:.2f}\n"
        "(tree peak = highest sum of VmRSS over all processes, sampled every 50 ms; shared pages count in every "
        "process. Per-process peaks are the kernel's VmHWM; largest process = ru_maxrss from wait4.)\n"
    )


def bench_concurrent(inp: Inputs, args) -> str:
    n, batch = args.concurrent, max(args.batch, args.concurrent)
    rows = rows_for(inp, inp.speech, batch)
    xdg = inp.tmp / "xdg-warm"

    def base():  # n writers at once, each transcoding its share of the batch one job after another
        share = [inp.speech] * (batch // n)
        cmds = [baseline_cmd(inp, share, inp.frames, args.baseline_threads) for _ in range(n)]
        runs = [r.check() for r in run_many(cmds, child_env())]
        return Run(cmds[0], max(r.wall_s for r in runs), sum(r.cpu_s for r in runs), 0)

    dhgen = lambda: dhgen_run(inp, rows, "conc", xdg, "--jobs", str(n))[0]  # noqa: E731
    runs = alternate(args.reps, {f"baseline ({n} transcode processes)": base, f"dhgen --jobs {n}": dhgen})
    frames = {name: (batch // n) * n * inp.frames for name in runs}
    title = (
        f"3. concurrent: {batch // n * n} jobs x {args.seconds:g} s, {n} at once, warm cache, "
        f"{args.reps} alternated reps "
        f"(target <= {TARGET_WALL})"
    )
    return table(title, COMPARISON_HEADERS, comparison_rows(runs, frames, f"baseline ({n} transcode processes)"))


def wav2lip_missing() -> str | None:
    """Why the wav2lip section cannot run, or None when it can."""
    try:
        from dhgen.models.wav2lip.network import Wav2Lip  # noqa: F401
    except ImportError as exc:
        return f"dhgen's wav2lip network cannot be imported ({exc})"
    return None


def bench_wav2lip(inp: Inputs, args) -> str:
    seconds, batch = args.wav2lip_seconds, args.wav2lip_batch
    title = f"4. wav2lip: torch vs onnxruntime, same random weights, {seconds:g} s clip, --batch-size {batch}, --jobs 1"
    why = wav2lip_missing()
    if why:
        return f"## {title}\n\nskipped: {why}\n"
    pth = write_random_wav2lip(inp.tmp / "wav2lip-random.pth")
    graph = export_wav2lip_onnx(pth, inp.tmp / "wav2lip-random.onnx")
    frames = speech_frames(seconds)
    xdg = inp.tmp / "xdg-warm"
    rows = [("w", inp.short_speech, inp.avatar)]

    def dhgen(checkpoint: Path):
        extra = ["--model", "wav2lip", "--checkpoint", str(checkpoint), "--batch-size", str(batch), "--jobs", "1"]
        return lambda: dhgen_run(inp, rows, "w2l", xdg, *extra, sample_memory=True)[0]

    variants = {
        "baseline (transcode only)": lambda: run_timed(
            baseline_cmd(inp, [inp.short_speech], frames, args.baseline_threads), child_env()
        ).check(),
        W2L_RUNS["torch"]: dhgen(pth),
        W2L_RUNS["onnxruntime"]: dhgen(graph),
    }
    for name in list(variants)[1:]:
        variants[name]()  # warm-up: page cache, face cache
    runs = alternate(args.reps, variants)
    text = table(title, COMPARISON_HEADERS, comparison_rows(runs, dict.fromkeys(runs, frames), list(variants)[0]))
    torch_runs, onnx_runs = (runs[W2L_RUNS[b]] for b in ("torch", "onnxruntime"))
    paired = median([t.wall_s / o.wall_s for t, o in zip(torch_runs, onnx_runs, strict=True)])
    rss = {b: median([r.peak_by_kind().get(f"worker ({b})", 0.0) for r in runs[name]]) for b, name in W2L_RUNS.items()}
    cpu = median([t.cpu_s / o.cpu_s for t, o in zip(torch_runs, onnx_runs, strict=True)])
    threads, (torch_fps, torch_cpu), (onnx_fps, onnx_cpu) = model_alone(pth, graph, batch)
    return text + (
        f"\nonnxruntime / torch, frames/s of the whole run: {paired:.2f} (paired walls; target >= "
        f"{TARGET_ONNX_SPEEDUP}); frames per CPU second: {cpu:.2f}\n"
        f"model alone ({threads} thread(s), batch {batch}, best of 2 alternated rounds): torch {torch_fps:.1f} "
        f"frames/s ({torch_cpu:.1f} per CPU s), onnxruntime {onnx_fps:.1f} ({onnx_cpu:.1f}) = "
        f"{onnx_fps / torch_fps:.2f} ({onnx_cpu / torch_cpu:.2f})\n"
        f"inference worker peak RSS (VmHWM, median): torch {rss['torch']:.0f} MB, onnxruntime "
        f"{rss['onnxruntime']:.0f} MB = {rss['onnxruntime'] / rss['torch']:.2f}\n"
    )


def model_alone(pth: Path, graph: Path, batch: int, rounds: int = 2):
    """(frames/s, frames per CPU second) of each predictor in this process, with the threads the supervisor gives
    a CPU wav2lip worker; torch and onnxruntime alternated `rounds` times, the best round of each kept (a shared
    box slows a round down, never up)."""
    import torch

    from dhgen.executors.shares import worker_threads
    from dhgen.models import onnx_backend
    from dhgen.options import ModelOptions

    threads = worker_threads(os.cpu_count() or 2, 1, "cpu", ModelOptions(name="wav2lip", checkpoint=pth))
    torch.set_num_threads(threads)
    onnx_backend.set_num_threads(threads)
    predictors = {b: load_model("wav2lip", "cpu", c, batch) for b, c in (("torch", pth), ("onnxruntime", graph))}
    crops = random_crop_batch("wav2lip", batch)
    best = dict.fromkeys(predictors, (0.0, 0.0))
    for _ in range(rounds):
        for backend, predictor in predictors.items():
            predictor.predict(crops)
            wall, cpu, done = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - wall < 3.0:
                predictor.predict(crops)
                done += batch
            rates = (done / (time.perf_counter() - wall), done / (time.process_time() - cpu))
            best[backend] = max(best[backend], rates)
    return threads, best["torch"], best["onnxruntime"]


def bench_ray(inp: Inputs, args) -> str:
    n, batch = args.concurrent, max(args.batch, args.concurrent)
    rows = rows_for(inp, inp.speech, batch)
    xdg = inp.tmp / "xdg-warm"
    os.environ["XDG_CACHE_HOME"] = str(xdg)  # the node's processes inherit it: the same warm face cache as local
    started = time.perf_counter()
    cluster = start_ray_cluster(os.cpu_count() or 2)
    startup_s = time.perf_counter() - started
    try:
        ray_args = ("--executor", "ray", "--ray-address", cluster.address, "--jobs", str(n))
        sampler = RaySampler()
        first, _ = dhgen_run(inp, rows, "ray-first", xdg, *ray_args)  # the cluster's first driver: workers start
        runs = alternate(
            args.reps,
            {
                f"local supervisor --jobs {n}": lambda: dhgen_run(inp, rows, "local", xdg, "--jobs", str(n))[0],
                f"--executor ray --jobs {n} (1 node)": lambda: sampler.during(
                    lambda: dhgen_run(inp, rows, "ray", xdg, *ray_args)[0]
                ),
            },
        )
    finally:
        cluster.shutdown()
    frames = {name: batch * inp.frames for name in runs}
    title = (
        f"5. ray: {batch} jobs x {args.seconds:g} s, {n} at once, warm cache, {args.reps} alternated reps "
        f"(target ray/local <= {TARGET_RAY})"
    )
    text = table(title, COMPARISON_HEADERS, comparison_rows(runs, frames, f"local supervisor --jobs {n}"))
    peaks = "; ".join(f"{k} {v:.0f}" for k, v in sorted(sampler.peak_by_kind().items(), key=lambda kv: -kv[1]))
    return text + (
        f"\nRay cluster start-up (head node, {os.cpu_count()} CPUs, 127.0.0.1, no dashboard): {startup_s:.1f} s; "
        f"first ray run after it {first.wall_s:.1f} s (not in the table)\n"
        f"Ray's own processes during the ray runs: peak RSS sum {sampler.peak_sum_mb:.0f} MB; largest per kind "
        f"(MB): {peaks}\n(CPU s of the ray rows count the driver process tree only: the work runs in Ray's "
        "workers, which are not its children)\n"
    )


def start_ray_cluster(cpus: int):
    """A one-node Ray cluster on 127.0.0.1, as `ray start --head` would make it, owned by this process."""
    from dhgen.executors.raycluster.cluster import import_ray

    import_ray("127.0.0.1:6379")  # loopback: Ray takes 127.0.0.1 as this machine's address
    from ray.cluster_utils import Cluster

    node = {"num_cpus": cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    return Cluster(initialize_head=True, head_node_args={**node, "object_store_memory": 512 * 1024**2})


class RaySampler:
    """Peak RSS of Ray's processes (every process below this one that is not a dhgen CLI run), every 50 ms."""

    def __init__(self) -> None:
        self.peak_sum_mb = 0.0
        self._peaks: dict[int, tuple[str, float]] = {}

    def during(self, run):
        import threading

        stop = threading.Event()
        thread = threading.Thread(target=self._sample_until, args=(stop,), daemon=True)
        thread.start()
        try:
            return run()
        finally:
            stop.set()
            thread.join()

    def peak_by_kind(self) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for kind, mb in self._peaks.values():
            peaks[kind or "?"] = max(mb, peaks.get(kind or "?", 0.0))
        return peaks

    def _sample_until(self, stop) -> None:
        from common import _cmdline, _descendants, _status

        while not stop.wait(0.05):
            total = 0.0
            for pid, _ in _descendants(os.getpid()):
                command = _cmdline(pid)
                if pid == os.getpid() or "dhgen.cli" in command:  # this process, the dhgen driver
                    continue
                status = _status(pid)
                total += status.get("VmRSS", 0) / 1024
                known_kind, peak = self._peaks.get(pid, (None, 0.0))
                kind = _ray_kind(command) or known_kind  # the latest title (ray::...); an exiting process has none
                self._peaks[pid] = (kind, max(status.get("VmHWM", 0) / 1024, peak))
            self.peak_sum_mb = max(self.peak_sum_mb, total)


def _ray_kind(command: str) -> str | None:
    if not command:
        return None
    first = command.split()[0]
    if first.startswith("ray::"):
        return first
    name = Path(first).name
    if name.startswith("python"):
        script = next((Path(a).name for a in command.split()[1:] if a.endswith(".py")), "python")
        return script
    return name


def bench_peer(inp: Inputs, args) -> str:
    title = (
        f"6. peer: Wav2Lip's inference.py vs dhgen --model wav2lip, same random weights, {args.peer_seconds:g} s "
        "speech, 3 s 720p avatar, one run each, cold face cache"
    )
    if not (args.peer_repo and args.peer_python):
        return f"## {title}\n\nskipped: give --peer-repo and --peer-python (benchmarks/README.md)\n"
    folder = inp.tmp / "peer"
    folder.mkdir()
    repo = prepare_peer(args.peer_repo, folder)
    avatar = make_avatar(folder / "avatar720.mp4", *size_of("720p"))
    audio = make_speech(folder / "speech.wav", args.peer_seconds)
    pth = write_random_wav2lip(folder / "random.pth")
    graph = export_wav2lip_onnx(pth, folder / "random.onnx")
    runs = {}
    for name, checkpoint in (("dhgen .onnx", graph), ("dhgen .pth", pth)):
        out = Path(tempfile.mkdtemp(prefix="peer-dhgen-", dir=folder))
        cmd = dhgen_cmd("--audio", str(audio), "--avatar", str(avatar), "-o", str(out / "out.mp4"))
        cmd += ["--model", "wav2lip", "--checkpoint", str(checkpoint), "--progress", "none"]
        xdg = Path(tempfile.mkdtemp(prefix="xdg-cold-", dir=folder))
        runs[name] = run_timed(cmd, child_env(XDG_CACHE_HOME=str(xdg)), sample_memory=True).check()
    out = folder / "peer_out.mp4"
    peer = run_timed(peer_cmd(args.peer_python, pth, avatar, audio, out), sample_memory=True, cwd=repo).check()
    if not out.exists():
        raise RuntimeError(f"the peer wrote no {out} (is ffmpeg on PATH?)\n{peer.output[-2000:]}")
    runs["Wav2Lip inference.py"] = peer
    rows = [
        [
            name,
            f"{run.wall_s:.1f}",
            f"{run.cpu_s:.1f}",
            f"{run.peak_tree_rss_mb:.0f}",
            f"{max(run.peak_by_kind().values()):.0f}",
            f"{run.wall_s / peer.wall_s:.3f}",
            f"{run.cpu_s / peer.cpu_s:.3f}",
            f"{run.peak_tree_rss_mb / peer.peak_tree_rss_mb:.3f}",
        ]
        for name, run in runs.items()
    ]
    # The largest process by its own VmHWM: wait4's ru_maxrss would count this (torch-importing) process's pages,
    # which a child holds between fork and exec.
    headers = ["run", "wall s", "CPU s", "tree peak RSS MB", "largest process MB", "wall / peer", "CPU / peer"]
    headers.append("RSS / peer")
    return table(title, headers, rows) + (
        f"\ntargets with the ONNX graph: wall <= {TARGET_PEER_WALL}, peak RSS <= {TARGET_PEER_RSS} of the peer's. "
        "The peer's face detector is a stand-in (random S3FD weights, constant score heads: benchmarks/peer.py).\n"
    )


# --- driver ---------------------------------------------------------------------------------------------------


def prepare(tmp: Path, args) -> Inputs:
    width, height = size_of(args.size)
    avatar = make_avatar(tmp / f"avatar-{width}x{height}.mp4", width, height)
    prime_face_cache(avatar, tmp / "xdg-warm")  # every section but "dhgen cold" runs with this cache
    return Inputs(
        tmp=tmp,
        avatar=avatar,
        speech=make_speech(tmp / "speech.wav", args.seconds),
        long_speech=make_speech(tmp / "speech-long.wav", args.long_seconds),
        short_speech=make_speech(tmp / "speech-wav2lip.wav", args.wav2lip_seconds),
        frames=speech_frames(args.seconds),
    )


def header(args) -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "dhgen"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", ""
    import av
    import numpy

    width, height = size_of(args.size)
    return (
        f"# dhgen CPU benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n"
        f"commit {commit}{' (dhgen/ has uncommitted changes)' if dirty else ''}; {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; Python {platform.python_version()}, "
        f"PyAV {av.__version__}, numpy {numpy.__version__}\n"
        f"avatar {width}x{height} 25 fps 3 s H.264 (ping-ponged), speech {args.seconds:g} s; x264 veryfast crf 20 "
        f"+ AAC; baseline x264 threads {args.baseline_threads or 'auto'}\n"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    funcs = {
        "sequential": bench_sequential,
        "memory": bench_memory,
        "concurrent": bench_concurrent,
        "wav2lip": bench_wav2lip,
        "ray": bench_ray,
        "serve": bench_serve,
        "musetalk": musetalk_bench.bench,
        "peer": bench_peer,
    }
    parts = [header(args)]
    print(parts[0], flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dhgen-bench-") as tmp:
        inp = prepare(Path(tmp), args)
        sections = [(name, lambda f=funcs[name]: f(inp, args)) for name in wanted]
        return run_sections(sections, parts, args.out, started)


if __name__ == "__main__":
    sys.exit(main())
