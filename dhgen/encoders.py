"""Video encoders: which one a run uses, whether it opens on this machine, and the settings it gets.

`resolve_encoder(EncodeOptions)` is called once per run, in the main process, before the lock is taken (by
`dhgen.runner.render`, and by the CLI first so a bad choice exits 2). `--encoder auto` takes the NVENC encoder
of the codec when a tiny encode with it opens here, else the CPU encoder (libx264 / libx265). A named encoder
that does not open refuses the run with a `UsageError` that lists what this PyAV build has. Whether an encoder
works is learnt by opening it, never by reading the GPU's name (H100/H200 have CUDA but no NVENC engine).

One quality scale for every encoder, x264's: `--crf N` and `--preset NAME`, mapped per encoder family:

    family        quality (--crf N)                         preset (--preset NAME)
    libx264       crf N                                     NAME
    libx265       crf N+5 (x265's 28 looks like x264's 23)  NAME (x265 has the same names)
    *_nvenc       rc vbr, cq N, b 0 (constant quality)      p1..p7 (ultrafast p1 ... veryslow p7), or p1..p7 given
    other         the encoder's own defaults                the encoder's own defaults

A hardware encoder that fails during a job (NVENC's session limit on consumer cards) raises
`HardwareEncodeError`; the retry policy gives the job one more attempt and `job_options` switches that attempt to
the CPU encoder (`after_failures`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from dhgen.errors import HardwareEncodeError, UsageError, reason

if TYPE_CHECKING:
    from dhgen.options import EncodeOptions

log = logging.getLogger(__name__)

CODECS = ("h264", "hevc")
CPU_ENCODERS = {"h264": "libx264", "hevc": "libx265"}
NVENC_ENCODERS = {"h264": "h264_nvenc", "hevc": "hevc_nvenc"}
X264_PRESETS = (
    *("ultrafast", "superfast", "veryfast", "faster", "fast"),
    *("medium", "slow", "slower", "veryslow", "placebo"),
)
# NVENC's p1 (fastest) .. p7 (best) against x264's ten names, by their place on the speed/quality scale.
NVENC_PRESETS = dict(zip(X264_PRESETS, ("p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6", "p7", "p7"), strict=True))
X265_CRF_OFFSET = 5  # FFmpeg's H.265 guide: x265 CRF 28 "should visually correspond to libx264 video at CRF 23"
CRF_RANGE = (0, 51)  # x264's CRF scale, on which --crf (and a manifest's crf) is given for every encoder
PROBE_SIZE = 256  # the probe's frame, px: well above the minimum frame size of hardware encoders
_CAP_HARDWARE, _CAP_HYBRID = 1 << 18, 1 << 19  # AV_CODEC_CAP_HARDWARE / _HYBRID: the encoder runs on a device


@dataclass(frozen=True)
class ResolvedEncoder:
    name: str  # the FFmpeg encoder: libx264, hevc_nvenc, ...
    codec: str  # h264 | hevc
    reason: str  # why this one: "asked for by name", "auto: ...", "fallback: ..."
    hardware: bool = False  # runs on a device (NVENC, QSV, ...): a failure there falls back to the CPU encoder

    def record(self, options: EncodeOptions, settings: dict[str, str]) -> dict:
        """The result record's `encoder`: what ran and why, the run's x264-scale preset and crf, and the `settings`
        the encoder was opened with."""
        return {
            "name": self.name,
            "codec": self.codec,
            "preset": options.preset,
            "crf": options.crf,
            "settings": settings,
            "reason": self.reason,
        }


# --- pure mappings ------------------------------------------------------------------------------------------------


def family(name: str) -> str:
    """x264 | x265 | nvenc | other: which settings mapping an encoder gets."""
    if name == "libx264":
        return "x264"
    if name == "libx265":
        return "x265"
    return "nvenc" if name.endswith("_nvenc") else "other"


def encoder_settings(name: str, preset: str, crf: int, threads: int = 0, gpu: int | None = None) -> dict[str, str]:
    """The options encoder `name` is opened with for x264-scale `preset` and `crf` (see the module docstring);
    `threads` > 0 caps x265's thread pool (x264's threads are set on the codec context); `gpu`: the CUDA device
    NVENC encodes on. UsageError for a preset the encoder has no equivalent of."""
    kind = family(name)
    if kind == "other":
        return {}
    if kind == "nvenc":
        settings = {"preset": nvenc_preset(preset), "rc": "vbr", "cq": str(max(1, crf)), "b": "0"}  # cq 0: "auto"
        return settings if gpu is None else {**settings, "gpu": str(gpu)}
    _check_x264_preset(name, preset)
    if kind == "x264":
        return {"preset": preset, "crf": str(crf)}
    params = "log-level=error" + (f":pools={threads}" if threads > 0 else "")  # x265 logs to stderr by default
    return {"preset": preset, "crf": str(min(CRF_RANGE[1], crf + X265_CRF_OFFSET)), "x265-params": params}


def nvenc_preset(preset: str) -> str:
    """NVENC's preset for an x264 preset name; p1..p7 pass as they are."""
    if preset in NVENC_PRESETS.values():
        return preset
    if preset not in NVENC_PRESETS:
        raise UsageError(
            f"--preset {preset!r} has no NVENC equivalent",
            hint=f"use one of {', '.join(X264_PRESETS)} (mapped to p1..p7), or p1..p7",
        )
    return NVENC_PRESETS[preset]


def _check_x264_preset(name: str, preset: str) -> None:
    if preset not in X264_PRESETS:
        raise UsageError(f"--preset {preset!r} is not a preset of {name}", hint=f"use one of {', '.join(X264_PRESETS)}")


def cpu_encoder(codec: str) -> str:
    return CPU_ENCODERS[codec]


# --- what this PyAV build has, and what opens here ----------------------------------------------------------------


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    codec: str  # h264 | hevc
    hardware: bool
    failure: str | None  # None: a tiny encode opened and produced a packet here; else why not

    @property
    def opens(self) -> bool:
        return self.failure is None


def codec_of(name: str) -> str | None:
    """h264 / hevc for an H.264/HEVC encoder of this PyAV build; None for any other name."""
    codec = _encoder(name)
    return codec.canonical_name if codec is not None and codec.canonical_name in CODECS else None


def is_hardware(name: str) -> bool:
    codec = _encoder(name)
    return codec is not None and bool(codec.capabilities & (_CAP_HARDWARE | _CAP_HYBRID))


def _encoder(name: str):
    import av.codec

    try:
        codec = av.codec.Codec(name, "w")
    except ValueError:  # UnknownCodecError: not in this build, or not an encoder
        return None
    return codec if codec.type == "video" else None


def h26x_encoders() -> list[str]:
    """Every H.264/HEVC encoder in this PyAV build (by FFmpeg name, CPU encoders first), opening or not."""
    import av

    names = {c.name for c in (_encoder(n) for n in av.codecs_available) if c and c.canonical_name in CODECS}
    return sorted(names, key=lambda n: (n not in CPU_ENCODERS.values(), codec_of(n), n))


def survey() -> list[EncoderInfo]:
    """Each H.264/HEVC encoder of this build and whether it opens here (what `dhgen doctor` lists)."""
    return [EncoderInfo(n, codec_of(n), is_hardware(n), probe(n)) for n in h26x_encoders()]


@functools.cache
def probe(name: str) -> str | None:
    """None when a tiny yuv420p encode with `name` opens and yields a packet here, else why not (FFmpeg's words).
    Once per process and encoder: what opens does not change during a run. ~5 ms for libx264, ~30 ms for libx265."""
    import av

    if _encoder(name) is None:
        return "not in this PyAV build"
    ctx = av.CodecContext.create(name, "w")
    ctx.options = encoder_settings(name, "ultrafast", 23)  # as dhgen would open it (and x265 kept quiet)
    ctx.width = ctx.height = PROBE_SIZE
    ctx.pix_fmt = "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 25), Fraction(25)
    frame = av.VideoFrame(PROBE_SIZE, PROBE_SIZE, "yuv420p")
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    with ffmpeg_log() as lines:
        try:
            ctx.open()
            packets = ctx.encode(frame) + ctx.encode(None)
        except av.error.FFmpegError as exc:
            return failure_words(exc, lines)
    return None if packets else "opened, but produced no packet"


@contextlib.contextmanager
def ffmpeg_log() -> Iterator[list]:
    """Collects FFmpeg's log lines in this thread (the why of a failed open: "Cannot load libcuda.so.1"), at error
    level and repeats included; PyAV's logging settings are restored afterwards."""
    import av.logging

    level, skip_repeated = av.logging.get_level(), av.logging.get_skip_repeated()
    if level is None or level < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # the second job's "Cannot load libcuda.so.1" is as worth saying
    try:
        with av.logging.Capture() as lines:
            yield lines
    finally:
        av.logging.set_level(level)
        av.logging.set_skip_repeated(skip_repeated)


def failure_words(exc: BaseException, lines: Iterable = ()) -> str:
    """An FFmpeg error and the first line FFmpeg logged with it ("Operation not permitted: Cannot load libcuda.so.1")"""
    detail = next((text.strip() for _, _, text in lines if text.strip()), "")
    return f"{reason(exc)}: {detail}" if detail else reason(exc)


# --- choosing the encoder of a run ------------------------------------------------------------------------------


def resolve_encoder(options: EncodeOptions, opens: Callable[[str], str | None] = probe) -> ResolvedEncoder:
    """The encoder a run with `options` uses, checked to open here (`opens(name)`: None when it does, else why
    not); UsageError (exit 2) naming the encoder and what this build has when it cannot. Also checks that
    `--preset` maps onto it."""
    codec = requested_codec(options)
    if options.encoder == "auto":
        resolved = _auto(codec, opens)
    else:
        failure = opens(options.encoder)
        if failure is not None:
            raise UsageError(f"--encoder {options.encoder} does not open here: {failure}", hint=_what_opens_hint())
        resolved = ResolvedEncoder(options.encoder, codec, "asked for by name", is_hardware(options.encoder))
    encoder_settings(resolved.name, options.preset, options.crf)
    log.info("encoder %s (%s)", resolved.name, resolved.reason)
    return resolved


def requested_codec(options: EncodeOptions) -> str:
    """h264 / hevc: `--codec`, else the named encoder's, else h264 (UsageError for a codec it cannot make)."""
    if options.codec is not None and options.codec not in CODECS:
        raise UsageError(f"--codec {options.codec!r} is not supported", hint="use --codec h264 or --codec hevc")
    if options.encoder == "auto":
        return options.codec or "h264"
    own = codec_of(options.encoder)
    if own is None:
        raise UsageError(f"--encoder {options.encoder} is not an H.264/HEVC encoder of this build", hint=_list_hint())
    if options.codec is not None and options.codec != own:
        raise UsageError(
            f"--encoder {options.encoder} encodes {own}, not {options.codec}",
            hint=f"drop --codec, or use --encoder auto --codec {options.codec}",
        )
    return own


def _auto(codec: str, opens: Callable[[str], str | None]) -> ResolvedEncoder:
    nvenc, cpu = NVENC_ENCODERS[codec], CPU_ENCODERS[codec]
    nvenc_failure = opens(nvenc)
    if nvenc_failure is None:
        return ResolvedEncoder(nvenc, codec, f"auto: {nvenc} opens here", hardware=True)
    cpu_failure = opens(cpu)
    if cpu_failure is not None:
        raise UsageError(
            f"no {codec} encoder opens here: {nvenc}: {nvenc_failure}; {cpu}: {cpu_failure}", hint=_what_opens_hint()
        )
    return ResolvedEncoder(cpu, codec, f"auto: {nvenc} does not open here ({nvenc_failure})")


def _list_hint() -> str:
    return f"this PyAV build has {', '.join(h26x_encoders()) or 'no H.264/HEVC encoder'}; see `dhgen doctor`"


def _what_opens_hint() -> str:
    opening = [n for n in h26x_encoders() if probe(n) is None]
    return (
        f"encoders that open here: {', '.join(opening) or 'none'} (this build also has "
        f"{', '.join(n for n in h26x_encoders() if n not in opening) or 'nothing else'}); "
        "--encoder auto takes NVENC when it opens, else the CPU encoder"
    )


def with_encoder(options: EncodeOptions, resolved: ResolvedEncoder) -> EncodeOptions:
    """`options` naming `resolved` (and why, and what was asked), so every job of the run uses it without probing
    again (on one machine; a Ray node decides `auto` again for itself: `resolve_here`)."""
    return dataclasses.replace(
        options,
        encoder=resolved.name,
        codec=resolved.codec,
        encoder_reason=resolved.reason,
        resolved_from=options.resolved_from or options.encoder,
    )


def resolve_here(options: EncodeOptions, opens: Callable[[str], str | None] = probe) -> EncodeOptions:
    """The run's encode options as a job on this machine uses them: an encoder the driver chose for `--encoder
    auto` (with its own devices) is chosen again by what opens here (`opens`, see `resolve_encoder`). A Ray job
    calls this on its node: a driver without a GPU cannot say whether NVENC opens on a GPU node, nor one with
    NVENC that it opens on a node without."""
    if options.resolved_from != "auto":
        return options
    return with_encoder(options, _auto(requested_codec(options), opens))


def on_gpu(options: EncodeOptions, gpu: int | None) -> EncodeOptions:
    """`options` encoding on CUDA device `gpu` when their encoder is NVENC (which otherwise opens every session
    on the first GPU); other encoders run on the CPU: unchanged."""
    if gpu is None or family(options.encoder) != "nvenc":
        return options
    return dataclasses.replace(options, gpu=gpu)


def encoder_for(options: EncodeOptions) -> ResolvedEncoder:
    """The encoder a writer opens for `options`: the one named (resolved for the run, or by the caller), or, for
    `auto` (options that did not come through `dhgen.runner.render`), the one `resolve_encoder` picks here."""
    if options.encoder == "auto":
        return resolve_encoder(options)
    codec = options.codec or codec_of(options.encoder) or "h264"
    return ResolvedEncoder(
        options.encoder, codec, options.encoder_reason or "asked for by name", is_hardware(options.encoder)
    )


def after_failures(options: EncodeOptions, errors: Iterable[dict]) -> EncodeOptions:
    """The encode options of a job's next attempt: the CPU encoder of the codec once a hardware encoder failed in an
    earlier attempt (`HardwareEncodeError` in `errors`), else `options` unchanged."""
    failed = [e for e in errors if e.get("type") == HardwareEncodeError.__name__]
    if not failed or options.encoder in CPU_ENCODERS.values():
        return options
    codec = options.codec or codec_of(options.encoder) or "h264"
    why = f"fallback: the hardware encoder failed in an earlier attempt ({failed[-1].get('message', '')})"
    return dataclasses.replace(
        options, encoder=CPU_ENCODERS[codec], codec=codec, encoder_reason=why, resolved_from="", gpu=None
    )
