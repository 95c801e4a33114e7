"""The command line: parse arguments into options, run the library, turn outcomes into exit codes.

Only this module knows about typer and the terminal. Exit codes (DESIGN.md): 0 all succeeded or skipped,
1 a job failed, 2 usage or unreadable manifest, 75 the output folder is locked, 130 SIGINT, 143 SIGTERM.

Every error the user sees has one shape, whether typer's parser or dhgen found it: an `error:` line and a
`hint:` line on stderr (plain text, so cron mail and CI logs read the same as a terminal). Typer's boxed
error panels are replaced by that shape in `DhgenGroup.main`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from dhgen import __version__, events
from dhgen.encoders import X264_PRESETS
from dhgen.errors import DhgenError, Interrupted, OutputError, RunLocked, UsageError
from dhgen.manifest import Job, read_manifest, single_job
from dhgen.options import AvatarOptions, EncodeOptions, FaceOptions, ModelOptions, RenderOptions, RunOptions
from dhgen.shards import Shard, resolve_shard, shard_path

if TYPE_CHECKING:
    from dhgen.report import FailedManifest

try:  # typer >= 0.17 carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
DEFAULT_OUT = Path("renders")
log = logging.getLogger("dhgen")


def print_error(message: str, hint: str | None) -> None:
    """The one shape of every error: `error: ...` and `  hint: ...` on stderr (bold/dim on a terminal only)."""
    from rich.console import Console
    from rich.text import Text

    text = Text.assemble(("error: ", "bold red"), message)
    if hint:
        text.append(f"\n  hint: {hint}", style="dim")
    Console(stderr=True, highlight=False, soft_wrap=True).print(text)


def _without_flag_metavars(command, ctx) -> None:
    """Flags take no value: show none (typer would show `<bool>`)."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class DhgenCommand(TyperCommand):
    def format_help(self, ctx, formatter) -> None:
        _without_flag_metavars(self, ctx)
        return super().format_help(ctx, formatter)


class DhgenGroup(TyperGroup):
    """Typer's group, with usage errors printed in dhgen's `error:`/`hint:` shape instead of a boxed panel."""

    def format_help(self, ctx, formatter) -> None:
        _without_flag_metavars(self, ctx)
        return super().format_help(ctx, formatter)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            code = _usage_error(exc)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def _usage_error(exc: ClickException) -> int:
    if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "dhgen"
        print_error(exc.format_message(), f"run `{command} -h` for the options")
    return exc.exit_code


app = typer.Typer(
    cls=DhgenGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Render lip-synced talking-head videos.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Progress(str, Enum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"
    none = "none"


class Loop(str, Enum):
    pingpong = "pingpong"
    loop = "loop"


class Precision(str, Enum):
    auto = "auto"
    fp16 = "fp16"
    fp32 = "fp32"


class Codec(str, Enum):
    h264 = "h264"
    hevc = "hevc"


class LogLevel(str, Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dhgen {__version__}")
        raise typer.Exit(EXIT_OK)


class ExecutorName(str, Enum):
    local = "local"
    ray = "ray"


@app.callback()
def _app(
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """dhgen: batch renderer for lip-synced talking-head videos."""


# Option groups of `render --help` (Typer's rich panels).
ONE_JOB, MANIFEST, MODEL, FACES, ENCODING, EXECUTION, REPORTING = (
    "One job (no manifest)",
    "Manifest batch",
    "Model",
    "Faces",
    "Avatar and encoding",
    "Execution and supervision",
    "Progress and logs",
)

RENDER_EPILOG = """\
[bold]Examples[/bold]
  dhgen render jobs.csv --out renders/batch1 --resume
  dhgen render --audio hello.wav --avatar face.mp4 -o hello.mp4
  dhgen render jobs.csv --device cuda --jobs 8 --progress plain

[bold]Exit codes[/bold]
  0        every job succeeded or was skipped
  1        at least one job failed (the others still ran; see the result log)
  2        usage error or unreadable manifest (nothing was started)
  75       another dhgen run holds the output folder
  130/143  stopped by SIGINT/SIGTERM (finished jobs are recorded)"""


# Options `render` and `serve` share (the same meaning, the same help).
ModelArg = Annotated[
    str,
    typer.Option(
        help="model family: mouthwarp (built in, no weights), wav2lip, or a plugin's (`dhgen models` lists them)",
        rich_help_panel=MODEL,
    ),
]
CheckpointArg = Annotated[
    Path | None,
    typer.Option(help="the model's weights: a file or a folder, as its family takes", rich_help_panel=MODEL),
]
PrecisionArg = Annotated[Precision, typer.Option(help="auto: fp16 on a GPU, fp32 on the CPU", rich_help_panel=MODEL)]
DeviceArg = Annotated[
    str,
    typer.Option(metavar="<auto|cpu|cuda|cuda:N>", help="where the model runs", rich_help_panel=MODEL),
]
BatchSizeArg = Annotated[
    int | None,
    typer.Option(min=1, help="face crops per model call (default 128 on CUDA, 16 on CPU)", rich_help_panel=MODEL),
]
EncoderArg = Annotated[
    str,
    typer.Option(
        help="auto (NVENC if it opens here, else libx264/libx265), or an H.264/HEVC encoder `dhgen doctor` lists",
        rich_help_panel=ENCODING,
    ),
]
CodecArg = Annotated[
    Codec | None,
    typer.Option(help="h264 (default) or hevc; a named --encoder implies its own", rich_help_panel=ENCODING),
]
PresetArg = Annotated[
    str,
    typer.Option(
        metavar="<preset>",
        help=f"x264 preset, fastest to smallest: {', '.join(X264_PRESETS)}; mapped per encoder (NVENC: p1..p7)",
        rich_help_panel=ENCODING,
    ),
]
CrfArg = Annotated[
    int,
    typer.Option(min=0, max=51, help="quality on x264's CRF scale, mapped per encoder", rich_help_panel=ENCODING),
]
JobsArg = Annotated[
    int, typer.Option(min=1, help="jobs rendered at once (--executor ray: per node)", rich_help_panel=EXECUTION)
]
WorkersArg = Annotated[
    int | None, typer.Option(min=1, help="inference workers (default: one per GPU)", rich_help_panel=EXECUTION)
]
RetriesArg = Annotated[
    int, typer.Option(min=0, help="extra attempts for retryable failures", rich_help_panel=EXECUTION)
]
StallTimeoutArg = Annotated[
    float, typer.Option(min=1, help="seconds without progress before Stalled", rich_help_panel=EXECUTION)
]
JobTimeoutArg = Annotated[
    float | None, typer.Option(min=1, help="seconds one job attempt may take", rich_help_panel=EXECUTION)
]
ExecutorArg = Annotated[
    ExecutorName,
    typer.Option(help="local: this machine's processes; ray: a Ray cluster", rich_help_panel=EXECUTION),
]
RayAddressArg = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: RAY_ADDRESS, else a private local Ray)",
        rich_help_panel=EXECUTION,
    ),
]
RaySharedFsArg = Annotated[
    bool,
    typer.Option(
        "--ray-shared-fs",
        help="every Ray node sees the input and output paths (no copies through the object store)",
        rich_help_panel=EXECUTION,
    ),
]
FaceArg = Annotated[
    str,
    typer.Option(
        metavar="<face>",
        help="which face speaks: auto (the surest), largest, center, left, right, N (the Nth from the left, "
        "0 first) or x,y (a pixel of it)",
        rich_help_panel=FACES,
    ),
]
MinFaceCoverageArg = Annotated[
    float,
    typer.Option(
        min=0.0, max=1.0, help="fail a job whose face is in a smaller share of its frames", rich_help_panel=FACES
    ),
]
RayHeadTimeoutArg = Annotated[
    float | None,
    typer.Option(
        min=1,
        help="seconds the Ray head may not answer before every unfinished job fails with ClusterLost "
        "(default 30; keep it under Ray's gcs_rpc_server_reconnect_timeout_s, 60)",
        rich_help_panel=EXECUTION,
    ),
]
LogLevelArg = Annotated[
    LogLevel,
    typer.Option(
        metavar="<level>", case_sensitive=False, help="DEBUG, INFO, WARNING or ERROR", rich_help_panel=REPORTING
    ),
]
LogFileArg = Annotated[
    Path | None,
    typer.Option(help="also append the log to this file (its folder is created)", rich_help_panel=REPORTING),
]


@app.command(cls=DhgenCommand, epilog=RENDER_EPILOG)
def render(
    manifest: Annotated[Path | None, typer.Argument(help="CSV or JSONL manifest of jobs")] = None,
    audio: Annotated[Path | None, typer.Option(help="the audio file", rich_help_panel=ONE_JOB)] = None,
    avatar: Annotated[Path | None, typer.Option(help="the avatar video or image", rich_help_panel=ONE_JOB)] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="the output .mp4", rich_help_panel=ONE_JOB)
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="replace -o OUT.mp4 if it exists (refused without this)", rich_help_panel=ONE_JOB
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="output folder for manifest jobs (default ./renders)", rich_help_panel=MANIFEST)
    ] = None,
    log_path: Annotated[
        Path | None, typer.Option("--log", help="result log (default OUT/results.jsonl)", rich_help_panel=MANIFEST)
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="skip jobs already rendered from the same inputs", rich_help_panel=MANIFEST)
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="with --resume: render again what would be skipped; exit 1 if its frames_digest changed",
            rich_help_panel=MANIFEST,
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="K/N|auto",
            help="render only shard K (0-based) of N; auto: from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX",
            rich_help_panel=MANIFEST,
        ),
    ] = None,
    shard_count: Annotated[
        int | None,
        typer.Option(min=1, help="--shard auto under Kubernetes: N (else DHGEN_SHARD_COUNT)", rich_help_panel=MANIFEST),
    ] = None,
    model: ModelArg = "mouthwarp",
    checkpoint: CheckpointArg = None,
    device: DeviceArg = "auto",
    batch_size: BatchSizeArg = None,
    precision: PrecisionArg = Precision.auto,
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
    face: FaceArg = "auto",
    min_face_coverage: MinFaceCoverageArg = 0.0,
    encoder: EncoderArg = "auto",
    codec: CodecArg = None,
    preset: PresetArg = "veryfast",
    crf: CrfArg = 20,
    jobs: JobsArg = 2,
    workers: WorkersArg = None,
    retries: RetriesArg = 2,
    stall_timeout: StallTimeoutArg = 60.0,
    job_timeout: JobTimeoutArg = None,
    executor: ExecutorArg = ExecutorName.local,
    ray_address: RayAddressArg = None,
    ray_shared_fs: RaySharedFsArg = False,
    ray_head_timeout: RayHeadTimeoutArg = None,
    progress: Annotated[
        Progress,
        typer.Option(
            metavar="<mode>",
            help="auto (rich on a terminal, else plain), rich, plain, json (events on stdout) or none",
            rich_help_panel=REPORTING,
        ),
    ] = Progress.auto,
    log_level: LogLevelArg = LogLevel.WARNING,
    log_file: LogFileArg = None,
    metrics_file: Annotated[
        Path | None, typer.Option(help="Prometheus textfile kept up to date (cron)", rich_help_panel=REPORTING)
    ] = None,
    heartbeat: Annotated[
        float, typer.Option(min=0.1, help="plain progress: seconds between heartbeats", rich_help_panel=REPORTING)
    ] = 30.0,
) -> None:
    """Render every job of MANIFEST, or one job given with --audio/--avatar/-o."""
    from dhgen.progress import EventLog, Tee, make_progress

    display = make_progress(progress.value, heartbeat_s=heartbeat)
    refusal = Tee(display)  # where a refused run's `run_error` event goes (the log file too, once it is open)
    try:
        _setup_logging(log_level.value, log_file, display)
        refusal = Tee(display, EventLog() if log_file else None)
        job_list, out_dir, one_job = _jobs(manifest, audio, avatar, output, out)
        run_shard = _shard(manifest, shard, shard_count)
        if verify and not resume:
            raise UsageError("--verify needs --resume", hint="--resume --verify checks the last run's frames_digest")
        options = RenderOptions(
            avatar=AvatarOptions(still_fps=fps, loop=loop.value),
            face=FaceOptions(choice=face, min_coverage=min_face_coverage),
            encode=_encode_options(encoder, codec, preset, crf),
            model=ModelOptions(
                name=model,
                checkpoint=checkpoint,
                device=device,
                precision=precision.value,
                batch_size=batch_size,
                pads=tuple(pads),
            ),
        )
        run = RunOptions(
            out_dir=out_dir,
            log_path=log_path,
            resume=resume,
            verify=verify,
            overwrite=overwrite or not one_job,
            jobs=jobs,
            workers=workers,
            retries=retries,
            stall_timeout=stall_timeout,
            job_timeout=job_timeout,
            shard=run_shard,
            **_executor_options(executor, ray_address, ray_shared_fs, ray_head_timeout),
        )
    except UsageError as exc:
        _fail(exc, EXIT_USAGE, refusal)
    raise typer.Exit(_run(job_list, options, run, _event_handlers(display, run, metrics_file, log_file)))


def _encode_options(encoder: str, codec: Codec | None, preset: str, crf: int) -> EncodeOptions:
    return EncodeOptions(encoder=encoder, codec=codec.value if codec else None, preset=preset, crf=crf)


def _shard(manifest: Path | None, spec: str | None, count: int | None) -> Shard | None:
    if manifest is None and (spec is not None or count is not None):
        raise UsageError("--shard splits a MANIFEST; a single --audio/--avatar job has no shards")
    return resolve_shard(spec, count, os.environ)


def _event_handlers(display, run: RunOptions, metrics_file: Path | None, log_file: Path | None):
    """The display, plus the metrics file and the event log when asked for, as one handler. A shard's metrics
    file has the shard in its name and labels (shards on one machine would otherwise overwrite one file)."""
    from dhgen.metrics import MetricsFile
    from dhgen.progress import EventLog, Tee

    metrics = None
    if metrics_file:
        labels = {"out_dir": str(run.out_dir), **({"shard": str(run.shard)} if run.shard else {})}
        metrics = MetricsFile(shard_path(metrics_file, run.shard) if run.shard else metrics_file, labels=labels)
    return Tee(display, metrics, EventLog() if log_file else None)


def _run(job_list: list[Job], options: RenderOptions, run: RunOptions, handlers) -> int:
    from dhgen.runner import render as render_jobs

    with handlers as on_event:
        try:
            summary = render_jobs(job_list, options, run, on_event=on_event)
        except UsageError as exc:
            _fail(exc, EXIT_USAGE, on_event)
        except RunLocked as exc:
            _fail(exc, EXIT_LOCKED, on_event)
        except OutputError as exc:
            _fail(exc, EXIT_FAILED, on_event)
        except Interrupted as exc:
            signum = exc.signum
        else:
            return summary.exit_code
    name = signal.Signals(signum).name
    typer.echo(f"stopped by {name}: finished jobs are in the result log; --resume renders the rest", err=True)
    raise typer.Exit(128 + signum)


SERVICE = "Service"
SERVE_EPILOG = """\
[bold]Examples[/bold]
  dhgen serve --state /srv/dhgen --input-root /srv/media --jobs 4
  curl -X POST localhost:8383/v1/jobs -H 'content-type: application/json' \\
       -d '{"id": "promo-17", "audio": "in/promo.wav", "avatar": "in/presenter.mp4"}'
  DHGEN_TOKEN=$(cat /etc/dhgen/token) dhgen serve --state /srv/dhgen --host 0.0.0.0

[bold]Exit codes[/bold]
  0   stopped by SIGTERM or SIGINT (running jobs finished, or queued again for the next start)
  2   usage error (a bad option, an address in use, a non-loopback --host without a token)
  75  another server holds the state folder"""


@app.command(cls=DhgenCommand, epilog=SERVE_EPILOG)
def serve(
    state: Annotated[
        Path, typer.Option(help="folder of the job store, the outputs and the uploads", rich_help_panel=SERVICE)
    ],
    host: Annotated[
        str, typer.Option(help="address to listen on; not loopback: a token is required", rich_help_panel=SERVICE)
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free one)", rich_help_panel=SERVICE)] = 8383,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DHGEN_TOKEN", help="Bearer token for every endpoint but /healthz", rich_help_panel=SERVICE
        ),
    ] = None,
    input_root: Annotated[
        Path | None,
        typer.Option(help="input paths must lie under it (default: none, uploads only)", rich_help_panel=SERVICE),
    ] = None,
    max_queue: Annotated[
        int, typer.Option(min=1, help="jobs queued or running at once; beyond: 429", rich_help_panel=SERVICE)
    ] = 1000,
    max_upload: Annotated[
        str,
        typer.Option(
            metavar="<size>", help="bytes one upload may have (K, M, G suffixes); beyond: 413", rich_help_panel=SERVICE
        ),
    ] = "2G",
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="after SIGTERM: seconds running jobs get to finish", rich_help_panel=SERVICE)
    ] = 60.0,
    model: ModelArg = "mouthwarp",
    checkpoint: CheckpointArg = None,
    device: DeviceArg = "auto",
    batch_size: BatchSizeArg = None,
    precision: PrecisionArg = Precision.auto,
    face: FaceArg = "auto",
    min_face_coverage: MinFaceCoverageArg = 0.0,
    encoder: EncoderArg = "auto",
    codec: CodecArg = None,
    preset: PresetArg = "veryfast",
    crf: CrfArg = 20,
    jobs: JobsArg = 2,
    workers: WorkersArg = None,
    retries: RetriesArg = 2,
    stall_timeout: StallTimeoutArg = 60.0,
    job_timeout: JobTimeoutArg = None,
    executor: ExecutorArg = ExecutorName.local,
    ray_address: RayAddressArg = None,
    ray_shared_fs: RaySharedFsArg = False,
    ray_head_timeout: RayHeadTimeoutArg = None,
    log_level: LogLevelArg = LogLevel.WARNING,
    log_file: LogFileArg = None,
) -> None:
    """Render jobs submitted over HTTP (dhgen's API and HeyGem's) with the same supervised renderer."""
    from dhgen.service.options import ServiceOptions
    from dhgen.service.server import serve as run_server

    try:
        _setup_logging(log_level.value, log_file, None)
        service = ServiceOptions(
            state=state,
            host=host,
            port=port,
            token=token,
            input_root=input_root,
            max_queue=max_queue,
            max_upload=_size(max_upload, "--max-upload"),
            drain_timeout=drain_timeout,
        )
        options = RenderOptions(
            face=FaceOptions(choice=face, min_coverage=min_face_coverage),
            encode=_encode_options(encoder, codec, preset, crf),
            model=ModelOptions(
                name=model, checkpoint=checkpoint, device=device, precision=precision.value, batch_size=batch_size
            ),
        )
        run = RunOptions(
            jobs=jobs,
            workers=workers,
            retries=retries,
            stall_timeout=stall_timeout,
            job_timeout=job_timeout,
            **_executor_options(executor, ray_address, ray_shared_fs, ray_head_timeout),
        )
        run_server(
            service,
            options,
            run,
            on_listening=lambda h, p: typer.echo(f"dhgen serve: listening on http://{h}:{p} (state {state})", err=True),
        )
    except UsageError as exc:
        _fail(exc, EXIT_USAGE)
    except RunLocked as exc:
        _fail(exc, EXIT_LOCKED)
    raise typer.Exit(EXIT_OK)


def _size(text: str, option: str) -> int:
    """Bytes from `123`, `64K`, `512M` or `2G` (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if not match or int(match.group(1)) < 1:
        raise UsageError(f"{option} {text!r} is not a size", hint="give bytes, or a number with K, M or G: 512M")
    return int(match.group(1)) * 1024 ** "_KMG".index(match.group(2).upper() or "_")


@app.command(cls=DhgenCommand)
def doctor(
    out: Annotated[Path, typer.Option(help="output folder whose free space is checked")] = DEFAULT_OUT,
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


@app.command(cls=DhgenCommand)
def models(
    as_json: Annotated[bool, typer.Option("--json", help="print the families as a JSON list")] = False,
) -> None:
    """List the model families --model takes: built-in and installed plugins (a broken plugin with its error)."""
    import json

    from dhgen.models.registry import describe, describe_line, entries

    found = entries()
    typer.echo(json.dumps([describe(f) for f in found], indent=2) if as_json else "\n".join(map(describe_line, found)))


@app.command(cls=DhgenCommand)
def report(
    out_dir: Annotated[Path, typer.Argument(help="the batch's output folder (--out): its result logs are read")],
    manifest: Annotated[
        Path | None, typer.Option(help="the batch's manifest: its jobs without a record count as missing")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
    failed_manifest: Annotated[
        Path | None,
        typer.Option(
            help="write the failed and missing jobs here, as a manifest to render again (when there are none, "
            "an earlier file there is removed)"
        ),
    ] = None,
    verify: Annotated[
        Path | None,
        typer.Option(
            metavar="OTHER",
            help="compare each job's frames_digest with another batch's (its --out folder or a result log)",
        ),
    ] = None,
) -> None:
    """Summarise a batch from every result log in OUT_DIR (shards included); exit 1 if a job failed or is missing
    (or, with --verify, made other frames than the other batch)."""
    import json

    from rich.console import Console

    from dhgen.report import build_report, report_lines, report_renderables, verify_against, write_failed_manifest

    try:
        batch = build_report(out_dir, manifest)
        if verify is not None:
            verify_against(batch, verify)
        again = write_failed_manifest(batch, failed_manifest) if failed_manifest else None
    except UsageError as exc:
        _fail(exc, EXIT_USAGE)
    except OutputError as exc:
        _fail(exc, EXIT_FAILED)
    except OSError as exc:
        _fail(
            OutputError(f"cannot write the failed manifest: {exc.strerror or exc}", path=failed_manifest), EXIT_FAILED
        )
    console = Console()
    if as_json:
        typer.echo(json.dumps({**batch.to_dict(), "failed_manifest": _written(again)}, indent=2))
    elif console.is_terminal:
        for renderable in report_renderables(batch):
            console.print(renderable)
    else:
        typer.echo("\n".join(report_lines(batch)))
    if again is not None and not as_json:
        typer.echo(_again_line(again, out_dir), err=True)
    raise typer.Exit(batch.exit_code)


def _again_line(again: FailedManifest, out_dir: Path) -> str:
    if again.jobs:
        return f"{again.jobs} job(s) to render again written to {again.path}; render it with --out {out_dir}"
    return "nothing to render again" + (f"; removed the earlier {again.path}" if again.removed else "")


def _written(again: FailedManifest | None) -> dict | None:
    if again is None:
        return None
    return {"path": str(again.path), "jobs": again.jobs, "written": bool(again.jobs), "removed": again.removed}


def _jobs(manifest, audio, avatar, output, out) -> tuple[list[Job], Path, bool]:
    """The jobs, their output folder, and whether this is the one-job form."""
    if manifest is not None:
        if audio or avatar or output:
            raise UsageError("give either a MANIFEST or --audio/--avatar/-o, not both")
        out = out or DEFAULT_OUT
        return read_manifest(manifest, out), out, False
    if not (audio and avatar and output):
        raise UsageError("give a MANIFEST, or all of --audio, --avatar and -o/--output")
    if out is not None:
        raise UsageError(
            f"--out {out} is for manifest runs; one job is written where -o says ({output})",
            hint="drop --out (the result log and the lock go beside the -o file)",
        )
    if output.suffix.lower() != ".mp4" or output.is_dir():
        raise UsageError(f"output {output} must be an .mp4 file name", hint="name the output file like out.mp4")
    from dhgen.checks import check_input_file

    check_input_file(audio, "--audio")
    check_input_file(avatar, "--avatar")
    return [single_job(audio, avatar, output)], output.parent, True


def _executor_options(
    executor: ExecutorName, ray_address: str | None, ray_shared_fs: bool, ray_head_timeout: float | None
) -> dict:
    if executor != ExecutorName.ray and (ray_address is not None or ray_shared_fs or ray_head_timeout is not None):
        raise UsageError("--ray-address, --ray-shared-fs and --ray-head-timeout need --executor ray")
    options = {"executor": executor.value, "ray_address": ray_address, "ray_shared_fs": ray_shared_fs}
    return options if ray_head_timeout is None else {**options, "ray_head_timeout": ray_head_timeout}


def _fail(exc: DhgenError, code: int, on_event=None):
    """End a command that could not go on: the error and its hint (for a run, after a `run_error` event for the
    JSON stream and the log file)."""
    if on_event is not None:
        on_event(events.run_error(exc.to_record(), code))
    print_error(exc.message, exc.hint)
    raise typer.Exit(code)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(level: str, log_file: Path | None, display) -> None:
    """Logs go to stderr (through the live display's console under --progress rich) and to --log-file."""
    from dhgen.progress import RichProgress

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
        handlers.append(_file_handler(log_file))
    logging.basicConfig(level=level, handlers=handlers, force=True)


def _file_handler(log_file: Path) -> logging.Handler:
    """A handler appending to `log_file`, its folder created as the output folder is."""
    from dhgen.checks import folder_problem

    problem = folder_problem(log_file.parent)
    if problem is None and log_file.is_dir():
        problem = f"{log_file} is a folder, not a file"
    if problem:
        raise UsageError(f"--log-file {problem}", hint="pass --log-file a file path you can write")
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot open --log-file {log_file}: {exc.strerror or exc}") from exc
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def main() -> None:
    app()


if __name__ == "__main__":
    main()
