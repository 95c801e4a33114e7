"""Avatar decoding: probe values per fixture, frame schedules, streamed frames equal to a plain forward decode."""

from __future__ import annotations

import pickle
import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dhgen.avatar import (
    AvatarInfo,
    decode_plan,
    frame_schedule,
    iter_first_frames,
    iter_frames,
    probe_avatar,
)
from dhgen.errors import AvatarDecodeError, MissingInputError
from dhgen.options import AvatarOptions

FIXTURES = Path(__file__).parent / "fixtures"


def raw_frames(path) -> list[np.ndarray]:
    """Every frame as PyAV decodes it, with no rotation or cropping: the reference for what dhgen yields."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def forward() -> dict[str, list[np.ndarray]]:
    """A plain forward pass through each video fixture, as iter_first_frames yields it."""
    out = {}
    for name in ("avatar.mp4", "avatar.webm", "avatar_odd.mp4", "avatar_rotated.mp4"):
        info = probe_avatar(FIXTURES / name)
        out[name] = [frame for _, frame in iter_first_frames(info, info.n_frames)]
    return out


# --- probe ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, width, height, n_frames, rotation",
    [
        ("avatar.mp4", 256, 256, 50, 0),
        ("avatar.webm", 256, 256, 25, 0),  # WebM has no frame count in its header: counted
        ("avatar_odd.mp4", 254, 238, 20, 0),  # stored 255x239
        ("avatar_rotated.mp4", 224, 256, 20, 90),  # stored 256x224 landscape, shown upright
        ("noface.mp4", 160, 128, 10, 0),
    ],
)
def test_probe_reports_size_rate_and_frame_count(name, width, height, n_frames, rotation):
    info = probe_avatar(FIXTURES / name, AvatarOptions())
    assert (info.width, info.height, info.n_frames, info.rotation) == (width, height, n_frames, rotation)
    assert info.fps == Fraction(25) and isinstance(info.fps, Fraction)
    assert not info.is_still
    assert info.path == str(FIXTURES / name)
    assert len(raw_frames(FIXTURES / name)) == n_frames


def test_still_image_uses_still_fps():
    info = probe_avatar(FIXTURES / "portrait.png", AvatarOptions(still_fps=30.0))
    assert info.is_still and info.n_frames == 1
    assert (info.width, info.height, info.fps) == (288, 288, Fraction(30))


def test_probe_result_pickles():
    info = probe_avatar(FIXTURES / "avatar.mp4")
    assert pickle.loads(pickle.dumps(info)) == info


@pytest.mark.parametrize("name", ["truncated.mp4", "truncated_faststart.mp4"])
def test_truncated_video_is_an_avatar_decode_error_naming_the_file(name):
    with pytest.raises(AvatarDecodeError) as err:
        probe_avatar(FIXTURES / name)
    assert name in err.value.message


def test_truncated_faststart_says_truncated():
    # The index survives at the front, so the file opens; the missing packets are what give it away.
    with pytest.raises(AvatarDecodeError, match="truncated"):
        probe_avatar(FIXTURES / "truncated_faststart.mp4")


def test_not_media_is_an_avatar_decode_error(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(AvatarDecodeError) as err:
        probe_avatar(fake)
    assert str(fake) in err.value.message


def test_audio_only_file_has_no_video_stream():
    with pytest.raises(AvatarDecodeError, match="no video stream"):
        probe_avatar(FIXTURES / "speech.wav")


def test_missing_file_is_a_missing_input_error(tmp_path):
    with pytest.raises(MissingInputError) as err:
        probe_avatar(tmp_path / "nope.mp4")
    assert "nope.mp4" in err.value.message


# --- schedule (pure) -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_avatar, n_out, loop, expected",
    [
        (5, 3, "pingpong", [0, 1, 2]),  # a longer avatar is cut
        (5, 3, "loop", [0, 1, 2]),
        (4, 12, "pingpong", [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]),
        (4, 10, "loop", [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]),
        (2, 5, "pingpong", [0, 1, 0, 1, 0]),
        (1, 4, "pingpong", [0, 0, 0, 0]),
        (1, 4, "loop", [0, 0, 0, 0]),
        (3, 0, "pingpong", []),
    ],
)
def test_frame_schedule(n_avatar, n_out, loop, expected):
    assert frame_schedule(n_avatar, n_out, loop).tolist() == expected


def test_pingpong_never_repeats_an_end_frame():
    schedule = frame_schedule(7, 100, "pingpong")
    assert np.all(np.abs(np.diff(schedule)) == 1)


def test_unknown_loop_mode_is_refused():
    with pytest.raises(ValueError, match="loop"):
        frame_schedule(5, 10, "bounce")


def test_decode_plan_bounds_chunks_and_reproduces_the_schedule():
    schedule = frame_schedule(50, 230, "pingpong")
    plan = decode_plan(schedule, keyframes=(0, 12, 24, 36, 48), max_frames=8)
    produced = []
    for start, stop, reverse in plan:
        span = list(range(start, stop))
        if reverse:
            assert stop - start <= 8
        produced += span[::-1] if reverse else span
    assert produced == schedule.tolist()


# --- streaming -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["avatar.mp4", "avatar.webm"])
@pytest.mark.parametrize("loop", ["pingpong", "loop"])
@pytest.mark.parametrize("chunk_frames", [None, 5, 1])  # default bound; 5 frames; one frame per backward chunk
def test_iter_frames_matches_the_forward_decode(forward, name, loop, chunk_frames):
    info = probe_avatar(FIXTURES / name)
    chunk_bytes = chunk_frames * info.width * info.height * 3 if chunk_frames else 256 * 2**20
    n_out = 2 * info.n_frames + 17  # forward, backward, part of forward again
    out = list(iter_frames(info, n_out, loop, chunk_bytes=chunk_bytes))
    assert [i for i, _ in out] == frame_schedule(info.n_frames, n_out, loop).tolist()
    for i, frame in out:
        assert frame.dtype == np.uint8 and frame.flags.c_contiguous
        assert np.array_equal(frame, forward[name][i]), f"avatar frame {i} differs from the forward decode"


def test_iter_frames_cuts_a_longer_avatar(forward):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    out = list(iter_frames(info, 7, "pingpong"))
    assert [i for i, _ in out] == list(range(7))


def test_forward_decode_is_bgr_and_matches_pyav():
    frames = raw_frames(FIXTURES / "avatar.mp4")
    info = probe_avatar(FIXTURES / "avatar.mp4")
    ours = [frame for _, frame in iter_first_frames(info, 10)]
    assert len(ours) == 10
    assert all(np.array_equal(a, b) for a, b in zip(ours, frames[:10], strict=True))


def test_iter_first_frames_with_step_yields_stride_and_last():
    info = probe_avatar(FIXTURES / "avatar.mp4")
    assert [i for i, _ in iter_first_frames(info, 23, step=5)] == [0, 5, 10, 15, 20, 22]
    assert len(list(iter_first_frames(info, 1000))) == 50


def test_odd_size_is_cropped_not_scaled():
    info = probe_avatar(FIXTURES / "avatar_odd.mp4")
    raw = raw_frames(FIXTURES / "avatar_odd.mp4")[0]
    assert raw.shape == (239, 255, 3)
    _, frame = next(iter_first_frames(info, 1))
    assert frame.shape == (238, 254, 3) and frame.flags.c_contiguous
    assert np.array_equal(frame, raw[:238, :254])  # right column and bottom row dropped


def test_rotated_video_comes_out_upright():
    info = probe_avatar(FIXTURES / "avatar_rotated.mp4")
    raw = raw_frames(FIXTURES / "avatar_rotated.mp4")
    assert raw[0].shape == (224, 256, 3)  # as stored: landscape
    frames = list(iter_frames(info, 25, "pingpong"))
    assert frames[0][1].shape == (256, 224, 3)  # upright: portrait
    for i, frame in frames:
        assert np.array_equal(frame, cv2.rotate(raw[i], cv2.ROTATE_90_CLOCKWISE))


def test_still_image_yields_independent_copies():
    info = probe_avatar(FIXTURES / "portrait.png")
    frames = list(iter_frames(info, 4, "pingpong"))
    assert [i for i, _ in frames] == [0, 0, 0, 0]
    expected = cv2.imread(str(FIXTURES / "portrait.png"))
    assert np.array_equal(frames[0][1], expected)
    frames[0][1][:] = 0  # callers paste into frames in place: that must not leak into the next one
    assert np.array_equal(frames[1][1], expected)


def test_yielded_frames_are_the_callers_own(forward):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    frames = iter_frames(info, 120, "pingpong", chunk_bytes=8 * 256 * 256 * 3)
    for i, frame in frames:
        assert np.array_equal(frame, forward["avatar.mp4"][i])
        frame[:] = 255


def test_file_truncated_after_probe_fails_with_the_file_named(tmp_path):
    path = tmp_path / "avatar.mp4"
    shutil.copy(FIXTURES / "avatar.mp4", path)
    info = probe_avatar(path)
    shutil.copy(FIXTURES / "truncated.mp4", path)
    with pytest.raises(AvatarDecodeError) as err:
        list(iter_frames(info, 60, "pingpong"))
    assert str(path) in err.value.message


def test_stream_ending_early_fails_with_the_file_named(tmp_path):
    # A faststart file cut after probing: it still opens, but its packets run out mid-stream.
    path = tmp_path / "avatar.mp4"
    data = (FIXTURES / "truncated_faststart.mp4").read_bytes()
    path.write_bytes(data)
    info = probe_avatar(FIXTURES / "avatar.mp4")
    info = AvatarInfo(**{**info.__dict__, "path": str(path)})
    with pytest.raises(AvatarDecodeError) as err:
        list(iter_frames(info, 50, "pingpong"))
    assert str(path) in err.value.message


def test_decoder_thread_count_does_not_change_frames(forward):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    for i, frame in iter_frames(info, 70, "pingpong", threads=1):
        assert np.array_equal(frame, forward["avatar.mp4"][i])
