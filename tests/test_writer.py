import errno
import hashlib
import resource
import signal
import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dhgen.encoders import probe
from dhgen.errors import AudioDecodeError, EncodeError, HardwareEncodeError, MissingInputError, OutputError
from dhgen.options import EncodeOptions
from dhgen.writer import VideoWriter, aac_rate, write_file_atomically

W, H = 64, 48


def sine_wav(path: Path, rate: int = 16000, layout: str = "mono", seconds: float = 1.0) -> Path:
    """A 440 Hz sine WAV written with PyAV."""
    n = int(rate * seconds)
    channels = 1 if layout == "mono" else 2
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 32767).astype(np.int16)
    interleaved = np.repeat(tone, channels)[None, :]
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def source_seconds(path: Path) -> float:
    with av.open(str(path)) as src:
        stream = src.streams.audio[0]
        return sum(f.samples for f in src.decode(stream)) / stream.rate


def frames(n: int, width: int = W, height: int = H):
    """A moving gradient, so the encoder has something to code."""
    ramp = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
    for i in range(n):
        shift = np.uint8(i % 256)
        yield np.ascontiguousarray(np.dstack([ramp + shift, ramp * 2 - shift, 255 - ramp]))


def render(target: Path, audio: Path, fps=Fraction(25), options: EncodeOptions | None = None) -> int:
    """Write round(duration * fps) frames over `audio`, as the pipeline does; returns the frame count."""
    n = round(source_seconds(audio) * fps)
    with VideoWriter(target, W, H, Fraction(fps), audio, options or EncodeOptions()) as writer:
        for frame in frames(n):
            writer.write(frame)
    assert writer.frames_written == n
    return n


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".partial.mp4")]


def top_level_boxes(data: bytes) -> list[str]:
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size == 0:
            break
        pos += size
    return boxes


def x264_settings(path: Path) -> bytes:
    data = path.read_bytes()
    start = data.index(b"x264 - core")
    return data[start : data.index(b"\x00", start)]


def test_aac_rate_keeps_supported_rates_else_48k():
    assert [aac_rate(r) for r in (16000, 22050, 24000, 44100, 48000, 8000)] == [
        16000,
        22050,
        24000,
        44100,
        48000,
        8000,
    ]
    assert aac_rate(37800) == 48000
    assert aac_rate(0) == 48000


@pytest.mark.parametrize(
    ("rate", "layout", "fps"),
    [(16000, "mono", Fraction(25)), (44100, "stereo", Fraction(30000, 1001)), (37800, "mono", Fraction(25))],
)
def test_output_has_h264_and_aac_with_matching_durations(tmp_path, rate, layout, fps):
    audio = sine_wav(tmp_path / "a.wav", rate, layout, seconds=1.3)
    target = tmp_path / "out.mp4"
    n = render(target, audio, fps)

    with av.open(str(target)) as out:
        assert [s.type for s in out.streams] == ["video", "audio"]
        video, sound = out.streams.video[0], out.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (W, H)
        assert video.average_rate == fps
        assert sound.codec_context.name == "aac"
        assert sound.rate == aac_rate(rate)
        assert sound.channels == (1 if layout == "mono" else 2)
        duration = out.duration / 1e6
        audio_duration = float(sound.duration * sound.time_base)
        assert sum(1 for _ in out.decode(video)) == n
    assert abs(duration - 1.3) <= 1 / fps
    assert abs(audio_duration - 1.3) <= 1 / fps
    assert leftovers(tmp_path) == []


def test_audio_is_interleaved_and_moov_comes_first(tmp_path):
    # Longer than the muxer's 10 s interleaving window: audio muxed only at the end would start ~2 s late.
    audio = sine_wav(tmp_path / "a.wav", rate=8000, seconds=12.0)
    target = tmp_path / "out.mp4"
    render(target, audio)

    with av.open(str(target)) as out:  # the demuxer yields by time; the file's order is by byte position
        order = [kind for _, kind in sorted((p.pos, p.stream.type) for p in out.demux() if p.size)]
    assert set(order[: len(order) // 4]) == {"video", "audio"}
    assert order.index("audio") < 25  # within the first second of video
    boxes = top_level_boxes(target.read_bytes())
    assert boxes.index("moov") < boxes.index("mdat")


def test_colours_survive_the_round_trip(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.2)
    target = tmp_path / "out.mp4"
    colours = [(40, 120, 200), (200, 60, 30), (128, 128, 128)]
    with VideoWriter(target, W, H, Fraction(25), audio, EncodeOptions(crf=10)) as writer:
        for bgr in colours:
            writer.write(np.full((H, W, 3), bgr, np.uint8))
    with av.open(str(target)) as out:
        # Tagged BT.601 limited range (what the conversion produces), so players do not assume BT.709 for HD.
        assert out.streams.video[0].codec_context.colorspace == 6  # AVCOL_SPC_SMPTE170M
        assert out.streams.video[0].codec_context.color_range == 1  # AVCOL_RANGE_MPEG
        decoded = [f.to_ndarray(format="bgr24") for f in out.decode(video=0)]
    for bgr, frame in zip(colours, decoded, strict=True):
        assert np.abs(frame[H // 2, W // 2].astype(int) - bgr).max() <= 4


def test_preset_crf_and_threads_reach_x264(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.2)
    render(tmp_path / "fast.mp4", audio, options=EncodeOptions(preset="ultrafast", crf=30, threads=1))
    render(tmp_path / "default.mp4", audio)

    fast = x264_settings(tmp_path / "fast.mp4")
    assert b" crf=30.0 " in fast and b" cabac=0 " in fast and b" threads=1 " in fast
    default = x264_settings(tmp_path / "default.mp4")
    assert b" crf=20.0 " in default and b" cabac=1 " in default  # veryfast keeps CABAC


def test_exception_inside_with_leaves_existing_target_alone(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.5)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous render")

    with pytest.raises(RuntimeError, match="caller failed"):
        with VideoWriter(target, W, H, Fraction(25), audio, EncodeOptions()) as writer:
            for frame in frames(5):
                writer.write(frame)
            raise RuntimeError("caller failed")

    assert target.read_bytes() == b"previous render"
    assert leftovers(tmp_path) == []


def test_exception_inside_with_creates_no_target(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.5)
    target = tmp_path / "out.mp4"
    with pytest.raises(KeyError):
        with VideoWriter(target, W, H, Fraction(25), audio, EncodeOptions()):
            raise KeyError("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


@pytest.mark.parametrize(
    ("where", "reason"),
    [("under_a_file", "Not a directory"), ("missing_folder", "No such file or directory")],
)
def test_unwritable_output_folder_is_output_error_naming_the_path(tmp_path, where, reason):
    # Tests run as root, which ignores permission bits; these fail for root too.
    audio = sine_wav(tmp_path / "a.wav", seconds=0.2)
    if where == "under_a_file":
        (tmp_path / "plain").write_text("a file, not a folder")
        target = tmp_path / "plain" / "out.mp4"
    else:
        target = tmp_path / "no" / "such" / "out.mp4"

    with pytest.raises(OutputError) as info:
        VideoWriter(target, W, H, Fraction(25), audio, EncodeOptions()).__enter__()

    assert str(target) in info.value.message
    assert reason in info.value.message
    assert isinstance(info.value.__cause__, OSError)
    assert not target.exists()


def test_write_error_midway_is_output_error_and_cleans_up(tmp_path):
    """A write that fails mid-file (as on a full disk) removes the temp file and keeps the old target."""
    audio = sine_wav(tmp_path / "a.wav", seconds=2.0)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous render")
    noise = np.random.default_rng(0).integers(0, 256, (50, H, W, 3), dtype=np.uint8)

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OutputError) as info:
            with VideoWriter(target, W, H, Fraction(25), audio, EncodeOptions(crf=0)) as writer:
                for frame in noise:
                    writer.write(frame)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)

    assert info.value.__cause__.errno == errno.EFBIG
    assert str(target) in info.value.message
    assert target.read_bytes() == b"previous render"
    assert leftovers(tmp_path) == []


def test_missing_audio_is_missing_input_error(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(MissingInputError, match="nope.wav"):
        with VideoWriter(target, W, H, Fraction(25), tmp_path / "nope.wav", EncodeOptions()):
            pass
    assert sorted(tmp_path.iterdir()) == []


def test_audio_that_is_not_media_is_audio_decode_error(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"this is not a wave file" * 10)
    with pytest.raises(AudioDecodeError, match="a.wav"):
        with VideoWriter(tmp_path / "out.mp4", W, H, Fraction(25), audio, EncodeOptions()):
            pass
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.mp4").exists()


def test_no_frames_is_encode_error_and_no_output(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.2)
    with pytest.raises(EncodeError, match="no video frames"):
        with VideoWriter(tmp_path / "out.mp4", W, H, Fraction(25), audio, EncodeOptions()):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_odd_frame_size_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "out.mp4", 63, 48, Fraction(25), tmp_path / "a.wav", EncodeOptions())


def test_wrong_frame_shape_is_refused(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.2)
    with pytest.raises(ValueError, match="64x48|48x64"):
        with VideoWriter(tmp_path / "out.mp4", W, H, Fraction(25), audio, EncodeOptions()) as writer:
            writer.write(np.zeros((H, W + 2, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


# --- encoders, HEVC, digests --------------------------------------------------------------------------------------


def x265_settings(path: Path) -> list[str]:
    data = path.read_bytes()
    start = data.index(b"options: ")
    return data[start : data.index(b"\x80", start)].decode("latin-1").split()


def yuv420p_digest(bgr_frames) -> str:
    """frames_digest as documented: sha256 over each frame's Y, U and V planes in order, computed here from scratch."""
    digest = hashlib.sha256()
    for bgr in bgr_frames:
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # what the writer converts with (its docstring says why)
        y, u, v = i420[:H], i420[H : H + H // 4], i420[H + H // 4 :]
        for plane in (y, u, v):
            digest.update(plane.tobytes())
    return digest.hexdigest()


def test_hevc_is_tagged_hvc1_keeps_faststart_and_gets_x265_settings(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.6)
    target = tmp_path / "out.mp4"
    n = render(target, audio, options=EncodeOptions(encoder="libx265", codec="hevc", preset="fast", crf=22, threads=2))

    with av.open(str(target)) as out:
        video = out.streams.video[0]
        assert (video.codec_context.name, video.codec_tag) == ("hevc", "hvc1")  # not hev1: Safari/QuickTime
        assert out.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in out.decode(video)) == n
    boxes = top_level_boxes(target.read_bytes())
    assert boxes.index("moov") < boxes.index("mdat")
    settings = x265_settings(target)
    assert "crf=27.0" in settings and "numa-pools=2" in settings  # --crf 22 on x264's scale is x265's 27


def test_the_writer_reports_the_encoder_and_settings_it_ran(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.2)
    with VideoWriter(tmp_path / "o.mp4", W, H, Fraction(25), audio, EncodeOptions(encoder="libx265")) as writer:
        for frame in frames(5):
            writer.write(frame)
    record = writer.encoder_record
    assert (record["name"], record["codec"], record["reason"]) == ("libx265", "hevc", "asked for by name")
    assert (record["preset"], record["crf"], record["settings"]["crf"]) == ("veryfast", 20, "25")


def test_frames_digest_is_the_sha256_of_the_yuv420p_planes_whatever_the_encoder(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.4)
    expected = yuv420p_digest(frames(10))
    digests = set()
    for i, options in enumerate(
        [EncodeOptions(), EncodeOptions(threads=1, preset="ultrafast", crf=35), EncodeOptions(encoder="libx265")]
    ):
        with VideoWriter(tmp_path / f"{i}.mp4", W, H, Fraction(25), audio, options) as writer:
            for frame in frames(10):
                writer.write(frame)
        digests.add(writer.frames_digest)
    assert digests == {expected}
    with VideoWriter(tmp_path / "other.mp4", W, H, Fraction(25), audio, EncodeOptions()) as writer:
        for frame in list(frames(10))[::-1]:  # the same frames in another order
            writer.write(frame)
    assert writer.frames_digest != expected


@pytest.mark.skipif(probe("h264_nvenc") is None, reason="NVENC opens on this machine")
def test_a_hardware_encoder_that_does_not_open_is_a_retryable_hardware_encode_error(tmp_path):
    audio = sine_wav(tmp_path / "a.wav", seconds=0.2)
    target = tmp_path / "out.mp4"
    with pytest.raises(HardwareEncodeError) as info:  # the real h264_nvenc, failing as it does without an NVENC engine
        with VideoWriter(target, W, H, Fraction(25), audio, EncodeOptions(encoder="h264_nvenc", codec="h264")):
            raise AssertionError("not reached: the encoder opens before any frame")
    error = info.value
    assert error.retryable and isinstance(error, EncodeError)
    assert "h264_nvenc failed to open" in error.message and str(target) in error.message
    assert probe("h264_nvenc").split(": ", 1)[-1] in error.message  # FFmpeg's own words ("Cannot load libcuda...")
    assert "CPU encoder" in error.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_an_encoder_failing_mid_stream_is_an_encode_error_not_an_output_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DHGEN_TEST_FAULT", "encoder_eof_at:7")  # the encoder is flushed, so FFmpeg refuses frame 7
    audio = sine_wav(tmp_path / "a.wav", seconds=0.6)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous render")
    with pytest.raises(EncodeError) as info:
        render(target, audio)
    error = info.value
    assert type(error) is EncodeError and not error.retryable  # a CPU encoder's failure is final
    assert "libx264 failed encoding frame 7: End of file" in error.message
    assert isinstance(error.__cause__, av.error.FFmpegError)
    assert target.read_bytes() == b"previous render" and leftovers(tmp_path) == []


def test_bytes_rendered_elsewhere_are_written_whole_or_not_at_all(tmp_path):
    """What the Ray driver does with an output that a node rendered: temp file, fsync, rename."""
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous render")
    write_file_atomically(target, b"new render" * 1000)
    assert target.read_bytes() == b"new render" * 1000 and leftovers(tmp_path) == []

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: the write fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OutputError) as info:
            write_file_atomically(target, b"x" * (1 << 20))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert str(target) in info.value.message and info.value.hint
    assert target.read_bytes() == b"new render" * 1000 and leftovers(tmp_path) == []

    with pytest.raises(OutputError, match="No such file or directory"):
        write_file_atomically(tmp_path / "no" / "such" / "out.mp4", b"data")
