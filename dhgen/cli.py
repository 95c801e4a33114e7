"""The command line: parse arguments into options, run the library, turn outcomes into exit codes.

Only this module knows about typer and the terminal. Exit codes (DESIGN.md): 0 all succeeded or skipped,
1 a job failed, 2 usage or unreadable manifest, 75 the output folder is locked, 130 SIGINT, 143 SIGTERM.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from dhgen.errors import DhgenError, Interrupted, OutputError, RunLocked, UsageError
from dhgen.manifest import Job, read_manifest, single_job
from dhgen.options import AvatarOptions, EncodeOptions, FaceOptions, ModelOptions, RenderOptions, RunOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Render lip-synced talking-head videos.")
log = logging.getLogger("dhgen")


class Progress(str, Enum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"
    none = "none"


class Loop(str, Enum):
    pingpong = "pingpong"
    loop = "loop"


class ExecutorName(str, Enum):
    local = "local"
    ray = "ray"


@app.callback()
def _app() -> None:
    """dhgen: batch renderer for lip-synced talking-head videos."""


# Option groups of `render --help` (Typer's rich panels).
ONE_JOB, MANIFEST, MODEL, ENCODING, EXECUTION, REPORTING = (
    "One job (no manifest)",
    "Manifest batch",
    "Model",
    "Avatar and encoding",
    "Execution and supervision",
    "Progress and logs",
)


@app.command()
def render(
    manifest: Annotated[Path | None, typer.Argument(help="CSV or JSONL manifest of jobs")] = None,
    audio: Annotated[Path | None, typer.Option(help="the audio file", rich_help_panel=ONE_JOB)] = None,
    avatar: Annotated[Path | None, typer.Option(help="the avatar video or image", rich_help_panel=ONE_JOB)] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="the output .mp4", rich_help_panel=ONE_JOB)
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder for manifest jobs", rich_help_panel=MANIFEST)] = Path(
        "renders"
    ),
    log_path: Annotated[
        Path | None, typer.Option("--log", help="result log (default OUT/results.jsonl)", rich_help_panel=MANIFEST)
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="skip jobs already rendered from the same inputs", rich_help_panel=MANIFEST)
    ] = False,
    model: Annotated[str, typer.Option(help="mouthwarp (built in) or wav2lip", rich_help_panel=MODEL)] = "mouthwarp",
    checkpoint: Annotated[Path | None, typer.Option(help="model weights (wav2lip)", rich_help_panel=MODEL)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N", rich_help_panel=MODEL)] = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="face crops per model call (default 128 on CUDA, 16 on CPU)", rich_help_panel=MODEL),
    ] = None,
    pads: Annotated[
        tuple[int, int, int, int],
        typer.Option(help="wav2lip face padding: top bottom left right", rich_help_panel=MODEL),
    ] = (0, 10, 0, 0),
    fps: Annotated[
        float, typer.Option(min=1, help="frame rate when the avatar is a still image", rich_help_panel=ENCODING)
    ] = 25.0,
    loop: Annotated[
        Loop, typer.Option(help="how a short avatar is extended", rich_help_panel=ENCODING)
    ] = Loop.pingpong,
    preset: Annotated[str, typer.Option(help="libx264 preset", rich_help_panel=ENCODING)] = "veryfast",
    crf: Annotated[int, typer.Option(min=0, max=51, help="libx264 CRF", rich_help_panel=ENCODING)] = 20,
    jobs: Annotated[
        int, typer.Option(min=1, help="jobs rendered at once (--executor ray: per node)", rich_help_panel=EXECUTION)
    ] = 2,
    workers: Annotated[
        int | None, typer.Option(min=1, help="inference workers (default: one per GPU)", rich_help_panel=EXECUTION)
    ] = None,
    retries: Annotated[
        int, typer.Option(min=0, help="extra attempts for retryable failures", rich_help_panel=EXECUTION)
    ] = 2,
    stall_timeout: Annotated[
        float, typer.Option(min=1, help="seconds without progress before Stalled", rich_help_panel=EXECUTION)
    ] = 60.0,
    job_timeout: Annotated[
        float | None, typer.Option(min=1, help="seconds one job attempt may take", rich_help_panel=EXECUTION)
    ] = None,
    executor: Annotated[
        ExecutorName,
        typer.Option(help="local: this machine's processes; ray: a Ray cluster", rich_help_panel=EXECUTION),
    ] = ExecutorName.local,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: RAY_ADDRESS, else a private local Ray)",
            rich_help_panel=EXECUTION,
        ),
    ] = None,
    ray_shared_fs: Annotated[
        bool,
        typer.Option(
            help="every Ray node sees the input and output paths (no copies through the object store)",
            rich_help_panel=EXECUTION,
        ),
    ] = False,
    progress: Annotated[Progress, typer.Option(help="progress display", rich_help_panel=REPORTING)] = Progress.auto,
    log_level: Annotated[
        str, typer.Option(help="DEBUG, INFO, WARNING or ERROR", rich_help_panel=REPORTING)
    ] = "WARNING",
    log_file: Annotated[
        Path | None, typer.Option(help="also append the log to this file", rich_help_panel=REPORTING)
    ] = None,
    metrics_file: Annotated[
        Path | None, typer.Option(help="Prometheus textfile kept up to date (cron)", rich_help_panel=REPORTING)
    ] = None,
    heartbeat: Annotated[
        float, typer.Option(min=0.1, help="plain progress: seconds between heartbeats", rich_help_panel=REPORTING)
    ] = 30.0,
) -> None:
    """Render every job of MANIFEST, or one job given with --audio/--avatar/-o."""
    from dhgen.progress import make_progress

    display = make_progress(progress.value, heartbeat_s=heartbeat)
    try:
        _setup_logging(log_level, log_file, display)
        job_list, out_dir = _jobs(manifest, audio, avatar, output, out)
        options = RenderOptions(
            avatar=AvatarOptions(still_fps=fps, loop=loop.value),
            face=FaceOptions(),
            encode=EncodeOptions(preset=preset, crf=crf),
            model=_model_options(model, checkpoint, device, batch_size, pads),
        )
        run = RunOptions(
            out_dir=out_dir,
            log_path=log_path,
            resume=resume,
            jobs=jobs,
            workers=workers,
            retries=retries,
            stall_timeout=stall_timeout,
            job_timeout=job_timeout,
            **_executor_options(executor, ray_address, ray_shared_fs),
        )
    except UsageError as exc:
        _fail(exc, EXIT_USAGE)
    raise typer.Exit(_run(job_list, options, run, _event_handlers(display, run, metrics_file, log_file)))


def _event_handlers(display, run: RunOptions, metrics_file: Path | None, log_file: Path | None):
    """The display, plus the metrics file and the event log when asked for, as one handler."""
    from dhgen.metrics import MetricsFile
    from dhgen.progress import EventLog, Tee

    metrics = MetricsFile(metrics_file, labels={"out_dir": str(run.out_dir)}) if metrics_file else None
    return Tee(display, metrics, EventLog() if log_file else None)


def _run(job_list: list[Job], options: RenderOptions, run: RunOptions, handlers) -> int:
    from dhgen.runner import render as render_jobs

    try:
        with handlers as on_event:
            summary = render_jobs(job_list, options, run, on_event=on_event)
    except RunLocked as exc:
        _fail(exc, EXIT_LOCKED)
    except Interrupted as exc:
        typer.echo(f"stopped by {signal.Signals(exc.signum).name}; finished jobs are in the result log", err=True)
        raise typer.Exit(128 + exc.signum) from None
    except OutputError as exc:
        _fail(exc, EXIT_FAILED)
    except UsageError as exc:  # e.g. --executor ray without Ray, or a cluster that cannot be reached
        _fail(exc, EXIT_USAGE)
    return summary.exit_code


@app.command()
def doctor(
    out: Annotated[Path, typer.Option(help="output folder whose free space is checked")] = Path("renders"),
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="also check a Ray cluster: its nodes, CPUs, GPUs, and whether each imports this dhgen"),
    ] = None,
) -> None:
    """Report what this machine (and a Ray cluster) has that dhgen needs; exit 1 when something required is missing."""
    import json

    from dhgen.doctor import run_doctor

    report = run_doctor(out, ray_address=ray_address)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))
    raise typer.Exit(report.exit_code)


def _jobs(manifest, audio, avatar, output, out) -> tuple[list[Job], Path]:
    if manifest is not None:
        if audio or avatar or output:
            raise UsageError("give either a MANIFEST or --audio/--avatar/-o, not both")
        return read_manifest(manifest, out), out
    if not (audio and avatar and output):
        raise UsageError("give a MANIFEST, or all of --audio, --avatar and -o/--output")
    if output.suffix.lower() != ".mp4":
        raise UsageError(f"output {output} must end in .mp4", hint="name the output file like out.mp4")
    return [single_job(audio, avatar, output)], output.parent


def _executor_options(executor: ExecutorName, ray_address: str | None, ray_shared_fs: bool) -> dict:
    if executor != ExecutorName.ray and (ray_address is not None or ray_shared_fs):
        raise UsageError("--ray-address and --ray-shared-fs need --executor ray")
    return {"executor": executor.value, "ray_address": ray_address, "ray_shared_fs": ray_shared_fs}


def _model_options(model, checkpoint, device, batch_size, pads) -> ModelOptions:
    from dhgen.models import get_spec

    spec = get_spec(model)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device {device!r} is not a device", hint="use auto, cpu, cuda or cuda:N")
    if spec.needs_checkpoint and checkpoint is None:
        raise UsageError(f"--model {model} needs --checkpoint PATH", hint="pass the generator's weights file")
    return ModelOptions(name=model, checkpoint=checkpoint, device=device, batch_size=batch_size, pads=tuple(pads))


def _fail(exc: DhgenError, code: int):
    typer.echo(f"error: {exc.message}\n  hint: {exc.hint}", err=True)
    raise typer.Exit(code)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(level: str, log_file: Path | None, display) -> None:
    """Logs go to stderr (through the live display's console under --progress rich) and to --log-file."""
    from dhgen.progress import RichProgress

    if not isinstance(logging.getLevelName(level.upper()), int):
        raise UsageError(f"unknown --log-level {level}", hint="use DEBUG, INFO, WARNING or ERROR")
    if isinstance(display, RichProgress):
        from rich.logging import RichHandler

        console_handler = RichHandler(console=display.console, show_path=False)
        console_handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    console_handler.addFilter(lambda record: not record.name.startswith("dhgen.events"))  # the display has them
    handlers: list[logging.Handler] = [console_handler]
    if log_file is not None:
        try:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot open --log-file {log_file}: {exc.strerror or exc}") from exc
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(file_handler)
    logging.basicConfig(level=level.upper(), handlers=handlers, force=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
