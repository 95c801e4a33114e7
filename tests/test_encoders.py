"""Choosing the encoder: the per-encoder mappings, the probe that opens a real encode, `auto`, named encoders that
cannot open (UsageError before anything runs), and the switch to the CPU encoder after a hardware failure."""

from __future__ import annotations

import pytest

from dhgen.encoders import (
    X264_PRESETS,
    after_failures,
    codec_of,
    encoder_for,
    encoder_settings,
    h26x_encoders,
    is_hardware,
    nvenc_preset,
    on_gpu,
    probe,
    resolve_encoder,
    resolve_here,
    with_encoder,
)
from dhgen.errors import EncodeError, HardwareEncodeError, JobTimeout, UsageError, WorkerCrashed
from dhgen.manifest import Job
from dhgen.options import EncodeOptions, RenderOptions, job_options
from dhgen.retry import RetryPolicy

NVENC_OPENS = probe("h264_nvenc") is None
needs_no_nvenc = pytest.mark.skipif(NVENC_OPENS, reason="NVENC opens on this machine")


# --- mappings -------------------------------------------------------------------------------------------------


def test_x264_gets_the_preset_and_crf_as_given():
    assert encoder_settings("libx264", "medium", 18) == {"preset": "medium", "crf": "18"}


def test_x265_crf_is_shifted_to_look_like_x264s_and_its_pool_capped():
    assert encoder_settings("libx265", "veryfast", 23, threads=3) == {
        "preset": "veryfast",
        "crf": "28",
        "x265-params": "log-level=error:pools=3",
    }
    assert encoder_settings("libx265", "fast", 50)["crf"] == "51"  # the top of the scale
    assert "pools" not in encoder_settings("libx265", "fast", 20)["x265-params"]  # threads 0: x265 decides


def test_nvenc_gets_constant_quality_vbr_and_a_p_preset():
    assert encoder_settings("h264_nvenc", "veryfast", 20) == {"preset": "p2", "rc": "vbr", "cq": "20", "b": "0"}
    assert encoder_settings("hevc_nvenc", "p6", 0)["cq"] == "1"  # cq 0 would mean "let NVENC pick"
    assert [nvenc_preset(p) for p in X264_PRESETS] == ["p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6", "p7", "p7"]
    assert nvenc_preset("p4") == "p4"


def test_nvenc_opens_on_the_gpu_it_is_given_and_only_nvenc_takes_one():
    assert encoder_settings("hevc_nvenc", "veryfast", 20, gpu=1)["gpu"] == "1"
    assert "gpu" not in encoder_settings("h264_nvenc", "veryfast", 20)  # the driver's first GPU
    assert on_gpu(EncodeOptions(encoder="h264_nvenc"), 2).gpu == 2
    assert on_gpu(EncodeOptions(encoder="libx264"), 2).gpu is None


def test_other_encoders_keep_their_own_defaults():
    assert encoder_settings("h264_qsv", "veryfast", 20) == {}


@pytest.mark.parametrize(("name", "preset"), [("libx264", "p4"), ("libx265", "turbo"), ("h264_nvenc", "speedy")])
def test_a_preset_the_encoder_has_no_equivalent_of_is_a_usage_error(name, preset):
    with pytest.raises(UsageError) as info:
        encoder_settings(name, preset, 20)
    assert repr(preset) in info.value.message and "veryfast" in info.value.hint


# --- what this build has --------------------------------------------------------------------------------------


def test_the_build_lists_cpu_h264_and_hevc_encoders_first_and_nvenc_as_hardware():
    names = h26x_encoders()
    assert names[:2] == ["libx264", "libx265"]
    assert "h264_nvenc" in names and "hevc_nvenc" in names
    assert (codec_of("libx264"), codec_of("libx265"), codec_of("hevc_nvenc")) == ("h264", "hevc", "hevc")
    assert codec_of("libvpx-vp9") is None and codec_of("aac") is None and codec_of("no-such") is None
    assert is_hardware("h264_nvenc") and not is_hardware("libx264")


def test_the_probe_opens_a_real_encode():
    assert probe("libx264") is None and probe("libx265") is None
    assert probe("no-such-encoder") == "not in this PyAV build"
    assert "yuv420p" in probe("libx264rgb")  # FFmpeg's own words: RGB input only


@needs_no_nvenc
def test_the_probe_of_nvenc_here_says_why_it_does_not_open():
    why = probe("h264_nvenc")
    assert why and ":" in why  # "<FFmpeg error>: <what FFmpeg logged>", e.g. "...: Cannot load libcuda.so.1"


# --- resolving a run's encoder ----------------------------------------------------------------------------------


@needs_no_nvenc
@pytest.mark.parametrize(
    ("codec", "cpu", "nvenc"), [(None, "libx264", "h264_nvenc"), ("hevc", "libx265", "hevc_nvenc")]
)
def test_auto_without_nvenc_takes_the_cpu_encoder_and_says_why(codec, cpu, nvenc):
    resolved = resolve_encoder(EncodeOptions(codec=codec))
    assert (resolved.name, resolved.hardware) == (cpu, False)
    assert resolved.reason == f"auto: {nvenc} does not open here ({probe(nvenc)})"


def test_a_named_encoder_that_opens_is_taken_with_its_codec():
    resolved = resolve_encoder(EncodeOptions(encoder="libx265"))
    assert (resolved.name, resolved.codec, resolved.reason) == ("libx265", "hevc", "asked for by name")


@needs_no_nvenc
def test_a_named_encoder_that_does_not_open_names_it_and_what_opens():
    with pytest.raises(UsageError) as info:
        resolve_encoder(EncodeOptions(encoder="h264_nvenc"))
    assert "--encoder h264_nvenc does not open here" in info.value.message
    assert "encoders that open here: libx264, libx265" in info.value.hint
    assert "h264_nvenc" in info.value.hint  # in the build, listed among those that do not open


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (EncodeOptions(encoder="libvpx-vp9"), "is not an H.264/HEVC encoder"),
        (EncodeOptions(encoder="libx264", codec="hevc"), "libx264 encodes h264, not hevc"),
        (EncodeOptions(codec="vp9"), "--codec 'vp9' is not supported"),
        (EncodeOptions(encoder="libx265", preset="p3"), "--preset 'p3' is not a preset of libx265"),
    ],
)
def test_impossible_choices_are_usage_errors_with_hints(options, words):
    with pytest.raises(UsageError) as info:
        resolve_encoder(options)
    assert words in info.value.message and info.value.hint


def test_resolved_options_carry_the_name_and_why_to_every_writer():
    options = with_encoder(EncodeOptions(codec="hevc"), resolve_encoder(EncodeOptions(codec="hevc")))
    plan = encoder_for(options)
    assert (plan.name, plan.codec) == (options.encoder, "hevc") and plan.reason == options.encoder_reason


# --- auto, decided again where a job runs (a Ray node) ---------------------------------------------------------


def _opening(*names: str):
    """What opens on a machine: these encoders (and no other)."""
    return lambda name: None if name in names else "Operation not permitted: Cannot load libcuda.so.1"


def _resolved_on(machine, options: EncodeOptions | None = None) -> EncodeOptions:
    options = options or EncodeOptions()
    return with_encoder(options, resolve_encoder(options, machine))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_auto_is_decided_again_by_the_devices_of_the_node_that_runs_the_job(codec):
    gpu_node, cpu_node = _opening("h264_nvenc", "hevc_nvenc", "libx264", "libx265"), _opening("libx264", "libx265")
    asked = EncodeOptions(codec=codec, preset="fast")
    on_a_cpu_driver = _resolved_on(cpu_node, asked)
    here = resolve_here(on_a_cpu_driver, gpu_node)
    assert (here.encoder, here.codec, here.preset) == (f"{codec}_nvenc", codec, "fast")
    assert here.encoder_reason == f"auto: {codec}_nvenc opens here"
    on_an_nvenc_driver = _resolved_on(gpu_node, asked)
    here = resolve_here(on_an_nvenc_driver, cpu_node)
    assert here.encoder == {"h264": "libx264", "hevc": "libx265"}[codec]
    assert "does not open here (Operation not permitted: Cannot load libcuda.so.1)" in here.encoder_reason


def test_a_named_encoder_and_a_fallback_are_not_decided_again():
    gpu_node, cpu_node = _opening("h264_nvenc", "libx264"), _opening("libx264")
    named = _resolved_on(gpu_node, EncodeOptions(encoder="libx264"))
    assert resolve_here(named, gpu_node) is named
    fallback = after_failures(_resolved_on(gpu_node), [_hardware_failure()])
    assert resolve_here(fallback, gpu_node).encoder == "libx264"  # NVENC failed in this job: not again
    assert resolve_here(_resolved_on(cpu_node), cpu_node).encoder == "libx264"


# --- after a hardware encoder failed ----------------------------------------------------------------------------


def _hardware_failure() -> dict:
    return HardwareEncodeError("h264_nvenc failed to open: Cannot allocate memory", path="o.mp4").to_record()


@pytest.mark.parametrize(
    ("encoder", "codec", "cpu"), [("h264_nvenc", "h264", "libx264"), ("hevc_nvenc", None, "libx265")]
)
def test_after_a_hardware_failure_the_next_attempt_uses_the_cpu_encoder(encoder, codec, cpu):
    options = RenderOptions(encode=EncodeOptions(encoder=encoder, codec=codec, preset="fast", crf=24))
    job = Job("j", "a.wav", "v.mp4", "o.mp4")
    assert job_options(options, job, []) is options  # first attempt: as resolved
    retried = job_options(options, job, [_hardware_failure()]).encode
    assert (retried.encoder, retried.preset, retried.crf) == (cpu, "fast", 24)
    assert retried.encoder_reason.startswith("fallback: the hardware encoder failed") and "Cannot allocate" in (
        retried.encoder_reason
    )


def test_other_failures_keep_the_encoder():
    options = EncodeOptions(encoder="h264_nvenc", codec="h264")
    crash = WorkerCrashed("worker died").to_record()
    assert after_failures(options, [crash]) is options
    cpu = EncodeOptions(encoder="libx264")
    assert after_failures(cpu, [_hardware_failure()]) is cpu


def test_a_hardware_encode_error_is_retried_once_a_cpu_one_never():
    policy = RetryPolicy(retries=5)
    first = _hardware_failure()
    assert issubclass(HardwareEncodeError, EncodeError)
    assert policy.should_retry(first, 1, [first])
    assert not policy.should_retry(first, 2, [first, first])  # the fallback failed the same way: final
    cpu = EncodeError("libx264 failed").to_record()
    assert not policy.should_retry(cpu, 1, [cpu])
    timeout = JobTimeout("slow").to_record()
    assert policy.should_retry(timeout, 2, [first, timeout])  # counted per type
