"""One job end to end, in this process: what a viewer of the output would notice.

Outputs are rendered once per module (`rendered`, `carphone`) with `InProcessExecutor`, then decoded with PyAV:
streams, frame count, rate, size, duration, the avatar's schedule (ping-pong or loop), and lip sync: on the still
portrait the only motion is the mouth, so its change must follow the speech and stay put on silence; on real
footage (carphone.mp4: a man talking in a moving car) the opening must follow the speech and his own talking
must not show through.
"""

from __future__ import annotations

import dataclasses
import wave
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import FIXTURES, KeptFrames, RecordingInference, fixture_script

import dhgen.face
from dhgen import pipeline
from dhgen.avatar import frame_schedule, iter_frames, probe_avatar
from dhgen.executors.inprocess import InProcessExecutor
from dhgen.face import detect_track, track_faces
from dhgen.manifest import Job
from dhgen.models import get_family
from dhgen.models.serving import load_model
from dhgen.options import AvatarOptions, FaceOptions, ModelOptions, RenderOptions, RunOptions
from dhgen.runner import render

FPS = 25


# --- helpers -----------------------------------------------------------------------------------------------------


def write_clip(source: Path, target: Path, seconds: float) -> float:
    """The first `seconds` of a PCM WAV as a new WAV; returns the clip's exact duration."""
    with wave.open(str(source)) as src:
        params = src.getparams()
        n = min(params.nframes, int(round(seconds * params.framerate)))
        data = src.readframes(n)
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(data)
    return n / params.framerate


def wav_samples(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768, w.getframerate()


def wav_duration(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def decode_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])


@dataclasses.dataclass
class Output:
    frames: np.ndarray
    fps: Fraction
    video_codec: str
    audio_codec: str
    n_video: int
    n_audio: int
    audio_s: float


def probe_output(path: Path) -> Output:
    with av.open(str(path)) as container:
        video, audio = container.streams.video, container.streams.audio
        n_video, n_audio = len(video), len(audio)
        fps = video[0].average_rate
        vcodec, acodec = video[0].codec_context.name, audio[0].codec_context.name
        audio_s = float(audio[0].duration * audio[0].time_base)
    return Output(decode_frames(path), fps, vcodec, acodec, n_video, n_audio, audio_s)


def face_rect(avatar: Path, cache_dir: Path, index: int = 0):
    """The model's crop rectangle on the avatar's frame `index`, from the face track (the pipeline's geometry)."""
    info = probe_avatar(avatar)
    track = track_faces(info, index + 1, FaceOptions(cache_dir=cache_dir))
    return get_family("mouthwarp").crop_rect(track.boxes[index], info.width, info.height)


def mouth_region(rect) -> tuple[slice, slice]:
    """Rows and columns around the lips and jaw inside a mouthwarp crop rectangle."""
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    return slice(y0 + int(0.40 * h), y0 + int(0.70 * h)), slice(x0 + int(0.25 * w), x0 + int(0.75 * w))


# --- renders shared by the module ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Rendered:
    root: Path
    audio: dict[str, Path]
    records: dict
    detections: list[str]  # avatar paths the face detector ran on, in order

    def output(self, name: str) -> Output:
        return probe_output(Path(self.records[name].output))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Rendered:
    root = tmp_path_factory.mktemp("pipeline")
    short, medium = root / "short.wav", root / "medium.wav"
    write_clip(FIXTURES / "speech.wav", short, 1.2)
    write_clip(FIXTURES / "speech.wav", medium, 2.8)  # 70 frames: longer than avatar.mp4's 50
    speech, silence = FIXTURES / "speech.wav", FIXTURES / "silence.wav"
    base = RenderOptions(face=FaceOptions(cache_dir=root / "cache"), model=ModelOptions(device="cpu"))
    plans = {
        "pingpong": (base, [("still", speech, "portrait.png"), ("silent", silence, "portrait.png")]),
        "pingpong ": (base, [("pingpong", medium, "avatar.mp4"), ("odd", short, "avatar_odd.mp4")]),
        "rotated": (base, [("rotated", short, "avatar_rotated.mp4"), ("webm", short, "avatar.webm")]),
        "loop": (dataclasses.replace(base, avatar=AvatarOptions(loop="loop")), [("loop", medium, "avatar.mp4")]),
        "30fps": (dataclasses.replace(base, avatar=AvatarOptions(still_fps=30)), [("still30", short, "portrait.png")]),
    }
    detections: list[str] = []
    real_detect = dhgen.face.detect_track

    def counting_detect(frames, n, options=None, *, path=None):
        detections.append(str(path))
        return real_detect(frames, n, options, path=path)

    records, audio = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dhgen.face, "detect_track", counting_detect)  # a spy: the real detector still runs
        for options, plan in plans.values():
            jobs = [Job(name, a, FIXTURES / v, root / "out" / f"{name}.mp4") for name, a, v in plan]
            audio.update({name: a for name, a, _ in plan})
            summary = render(jobs, options, RunOptions(out_dir=root / "out"), executor=InProcessExecutor(options))
            records.update({r.job_id: r for r in summary.records})
    return Rendered(root, audio, records, detections)


# --- every output: streams, frames, rate, size, duration -----------------------------------------------------------

EXPECTED = {  # name: (fps, width, height)
    "still": (25, 288, 288),
    "silent": (25, 288, 288),
    "pingpong": (25, 256, 256),
    "loop": (25, 256, 256),
    "odd": (25, 254, 238),  # 255x239 cropped to even
    "rotated": (25, 224, 256),  # stored 256x224 with a 90-degree display matrix
    "webm": (25, 256, 256),
    "still30": (30, 288, 288),  # --fps 30 on a still image
}


@pytest.mark.parametrize("name", EXPECTED)
def test_output_decodes_with_promised_streams_size_rate_and_length(rendered, name):
    record = rendered.records[name]
    assert record.status == "succeeded", record.error
    fps, width, height = EXPECTED[name]
    out = rendered.output(name)
    assert (out.n_video, out.n_audio) == (1, 1)
    assert (out.video_codec, out.audio_codec) == ("h264", "aac")
    assert out.fps == fps
    audio_s = wav_duration(rendered.audio[name])
    assert len(out.frames) == round(audio_s * fps) == record.frames
    assert out.frames.shape[1:] == (height, width, 3)
    assert (record.width, record.height, record.fps) == (width, height, fps)
    assert abs(len(out.frames) / fps - audio_s) <= 1 / fps  # the picture lasts as long as the sound
    assert abs(out.audio_s - audio_s) <= 1 / fps
    assert abs(record.duration_s - len(out.frames) / fps) < 1e-3


def test_rotated_avatar_is_upright(rendered):
    """A frontal-face detector finds upright faces only (the stored, unrotated picture has none)."""
    frames = rendered.output("rotated").frames
    track = detect_track(enumerate(frames[:1]), 1)
    x, y, w, h = track.boxes[0]
    assert h > 40 and y + h < 0.8 * frames.shape[1]  # a face in the upper part of a portrait-shaped frame


def nearest_avatar_frames(output: np.ndarray, avatar: np.ndarray, rows: slice) -> np.ndarray:
    """For each output frame, the index of the avatar frame it shows (compared away from the mouth)."""
    out = output[:, rows].astype(np.float32)
    ref = avatar[:, rows].astype(np.float32)
    cost = np.stack([np.abs(ref - frame).mean(axis=(1, 2, 3)) for frame in out])
    return cost.argmin(axis=1)


@pytest.mark.parametrize("mode", ["pingpong", "loop"])
def test_short_avatar_is_extended_by_pingpong_or_loop(rendered, mode):
    avatar = decode_frames(FIXTURES / "avatar.mp4")
    n_avatar = len(avatar)
    out = rendered.output(mode).frames
    seen = nearest_avatar_frames(out, avatar, slice(0, 70))  # the top rows: far from the mouth
    k = np.arange(len(out))
    period = 2 * n_avatar - 2
    pingpong = np.where(k % period < n_avatar, k % period, period - k % period)
    expected = pingpong if mode == "pingpong" else k % n_avatar
    assert np.mean(seen == expected) >= 0.95, seen.tolist()
    other = k % n_avatar if mode == "pingpong" else pingpong
    assert np.mean(seen[n_avatar:] == other[n_avatar:]) < 0.2  # and the other mode would not fit


# --- lip sync ------------------------------------------------------------------------------------------------------


def mouth_change(rendered: Rendered, name: str) -> np.ndarray:
    """Per output frame: mean absolute change (output vs the still avatar) inside the mouth region."""
    rect = face_rect(FIXTURES / "portrait.png", rendered.root / "cache")
    rows, cols = mouth_region(rect)
    avatar = decode_frames(FIXTURES / "portrait.png")[0].astype(np.float32)
    frames = rendered.output(name).frames
    return np.abs(frames[:, rows, cols].astype(np.float32) - avatar[rows, cols]).mean(axis=(1, 2, 3))


def speech_envelope(path: Path, n_frames: int, fps: int = FPS) -> np.ndarray:
    samples, rate = wav_samples(path)
    hop = rate / fps
    return np.array([np.sqrt(np.mean(samples[int(i * hop) : int((i + 1) * hop)] ** 2)) for i in range(n_frames)])


def test_mouth_moves_with_the_speech(rendered):
    change = mouth_change(rendered, "still")
    envelope = speech_envelope(FIXTURES / "speech.wav", len(change))
    r = np.corrcoef(change, envelope)[0, 1]
    assert r >= 0.6, f"mouth motion vs speech envelope: Pearson r = {r:.2f}"
    pauses = envelope < 0.1 * envelope.max()
    assert change[~pauses].mean() > 3 * change[pauses].mean()  # open when talking, closed in the pauses


def test_mouth_stays_closed_and_still_on_silence(rendered):
    frames = rendered.output("silent").frames
    rows, cols = mouth_region(face_rect(FIXTURES / "portrait.png", rendered.root / "cache"))
    mouth = frames[:, rows, cols].astype(np.float32)
    assert np.abs(np.diff(mouth, axis=0)).mean(axis=(1, 2, 3)).max() < 0.5  # frame to frame: no motion
    # Closed: as close to the avatar as the speech render's mouth is in its pauses, far from its open mouth.
    talking = mouth_change(rendered, "still")
    assert mouth_change(rendered, "silent").max() < 0.25 * talking.max()


# --- lip sync on real footage --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def carphone(tmp_path_factory) -> dict[str, np.ndarray]:
    """carphone.mp4 rendered with speech and with silence; per output frame, the share of dark pixels around
    the mouth (an open mouth shows a dark inside), and the same for the source footage itself."""
    root = tmp_path_factory.mktemp("carphone")
    options = RenderOptions(face=FaceOptions(cache_dir=root / "cache"), model=ModelOptions(device="cpu"))
    avatar = FIXTURES / "carphone.mp4"
    jobs = [Job(name, FIXTURES / f"{name}.wav", avatar, root / f"{name}.mp4") for name in ("speech", "silence")]
    summary = render(jobs, options, RunOptions(out_dir=root), executor=InProcessExecutor(options))
    assert [r.status for r in summary.records] == ["succeeded"] * 2, [r.error for r in summary.records]
    info = probe_avatar(avatar)
    track = track_faces(info, info.n_frames, options.face)
    shares = {
        name: dark_mouth_share(decode_frames(root / f"{name}.mp4"), track.boxes) for name in ("speech", "silence")
    }
    shares["source"] = dark_mouth_share(decode_frames(avatar), track.boxes)
    return shares


def dark_mouth_share(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per frame (avatar frames in ping-pong order), the share of pixels around the mouth darker than half the
    face's median brightness."""
    import cv2

    spec, (height, width) = get_family("mouthwarp"), frames.shape[1:3]
    shares = []
    for frame, k in zip(frames, frame_schedule(len(boxes), len(frames)), strict=True):
        x0, y0, x1, y1 = spec.crop_rect(boxes[k], width, height)
        face = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[y0:y1, x0:x1].astype(np.float32)
        h, w = face.shape
        mouth = face[int(0.3 * h) : int(0.66 * h), int(0.3 * w) : int(0.75 * w)]
        shares.append(float(np.mean(mouth < 0.5 * np.median(face))))
    return np.array(shares)


def test_real_footage_mouth_opens_with_the_speech(carphone):
    opening = carphone["speech"]
    envelope = speech_envelope(FIXTURES / "speech.wav", len(opening), fps=30000 / 1001)
    r = np.corrcoef(opening, envelope)[0, 1]
    assert r >= 0.6, f"dark mouth share vs speech envelope: Pearson r = {r:.2f}"
    pauses = envelope < 0.1 * envelope.max()
    assert opening[~pauses].mean() > 1.8 * opening[pauses].mean()


def test_real_footage_on_silence_his_own_talking_does_not_show(carphone):
    """In the source he opens his mouth wide (frames ~56-63); rendered on silence, it stays closed throughout."""
    source, silent = carphone["source"], carphone["silence"]
    assert source.max() > 2 * np.median(source)  # the footage really has a wide-open mouth
    assert silent.max() < 0.5 * source.max() and silent.max() < np.median(source)
    assert silent.max() < 0.4 * carphone["speech"].max()  # closed, compared with the mouth the speech opens


# --- compositing, before encoding ----------------------------------------------------------------------------------


def test_pixels_outside_the_mask_are_the_avatars_exactly(tmp_path):
    """Crop -> model -> paste, run by the pipeline on decoded frames: where alpha is 0 nothing may change."""
    import cv2

    options = RenderOptions(face=FaceOptions(cache_dir=tmp_path / "cache"), model=ModelOptions(device="cpu"))
    audio = tmp_path / "a.wav"
    write_clip(FIXTURES / "speech.wav", audio, 1.6)  # 40 frames, mouth open in most
    inference = RecordingInference(pipeline.LocalInference(load_model(options.model)))
    job_state = pipeline._Job(Job("x", audio, FIXTURES / "avatar.mp4", tmp_path / "x.mp4"), options, inference, None)
    composited, masks = KeptFrames(), []
    frames = iter_frames(job_state.info, job_state.n_out, options.avatar.loop)
    while chunk := list(islice(frames, pipeline.CHUNK_FRAMES)):
        submitted = job_state._submit(chunk)
        job_state._finish(submitted, composited)
        result = inference.results[submitted.ticket]
        for i, rect in enumerate(r for r in submitted.rects if r):
            alpha = result.alpha(i)
            x0, y0, x1, y1 = rect
            mask = np.zeros((job_state.info.height, job_state.info.width), bool)
            mask[y0:y1, x0:x1] = cv2.resize(alpha, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0
            masks.append(mask)
    avatar = decode_frames(FIXTURES / "avatar.mp4")  # decoded independently of the pipeline
    assert len(composited) == len(masks) == job_state.n_out == 40
    changed_inside = 0
    for i, (frame, mask) in enumerate(zip(composited, masks, strict=True)):
        assert np.array_equal(frame[~mask], avatar[i][~mask]), f"frame {i} changed outside the mask"
        assert 0 < mask.mean() < 0.2  # the mask is the mouth area, not the frame
        changed_inside += (frame[mask] != avatar[i][mask]).any()
    assert changed_inside >= 30  # and inside it, the mouth was repainted


def composited(job: Job, options: RenderOptions) -> tuple[pipeline._Job, list[np.ndarray]]:
    """The pipeline's frames for `job` as it hands them to the encoder (crop -> model -> paste, no encoding)."""
    state = pipeline._Job(job, options, pipeline.LocalInference(load_model(options.model)), None)
    out = KeptFrames()
    frames = iter_frames(state.info, state.n_out, options.avatar.loop)
    while chunk := list(islice(frames, pipeline.CHUNK_FRAMES)):
        state._finish(state._submit(chunk), out)
    return state, out


@pytest.mark.parametrize(
    ("choice", "side"),
    [("auto", "right"), ("left", "left"), ("right", "right"), ("largest", "left"), ("1", "right"), ("140,90", "left")],
)
def test_each_face_choice_animates_that_face_and_leaves_the_other_exactly_as_it_was(tmp_path, choice, side):
    """two_faces.jpg: the portrait (columns 0-287) and its mirror image (288-511). Where the frames differ from the
    still, the mouth moved: that region must be the chosen face's mouth, and the other face's half untouched."""
    audio = tmp_path / "a.wav"
    write_clip(FIXTURES / "speech.wav", audio, 1.2)
    face = FaceOptions(cache_dir=tmp_path / "cache", choice=choice)
    options = RenderOptions(face=face, model=ModelOptions(device="cpu"))
    state, frames = composited(Job("x", audio, FIXTURES / "two_faces.jpg", tmp_path / "x.mp4"), options)
    still = decode_frames(FIXTURES / "two_faces.jpg")[0]
    moved = np.any([np.any(frame != still, axis=2) for frame in frames], axis=0)
    ys, xs = np.nonzero(moved)
    chosen, other = (slice(0, 288), slice(288, 512)) if side == "left" else (slice(288, 512), slice(0, 288))
    assert moved[:, chosen].sum() > 200 and not moved[:, other].any()
    x, y, w, h = state.track.boxes[0]
    assert x < xs.mean() < x + w and y + h / 2 < ys.mean() < y + 1.2 * h  # around the chosen face's mouth
    assert state.face_coverage == 1.0


def test_the_mouth_stays_on_the_chosen_face_while_the_two_faces_pass_each_other(tmp_path):
    """two_faces_moving.mp4: the portrait moves from the left edge to the right one in the top row, its mirror image
    the other way in the bottom row. With `left`, every frame's changed pixels are inside the portrait's tile."""
    script = fixture_script("make_face_fixtures")
    audio = tmp_path / "a.wav"
    write_clip(FIXTURES / "speech.wav", audio, 2.0)  # 50 frames: the avatar once
    options = RenderOptions(face=FaceOptions(cache_dir=tmp_path / "cache", choice="left"), model=ModelOptions())
    _, frames = composited(Job("x", audio, FIXTURES / "two_faces_moving.mp4", tmp_path / "x.mp4"), options)
    avatar = decode_frames(FIXTURES / "two_faces_moving.mp4")
    for t, (frame, source) in enumerate(zip(frames, avatar, strict=True)):
        (x, y), _ = script.tile_positions(t)
        outside = np.ones(frame.shape[:2], bool)
        outside[y : y + script.TILE, x : x + script.TILE] = False
        assert np.array_equal(frame[outside], source[outside]), f"frame {t}: pixels changed outside the chosen face"
    assert sum(np.any(frame != source) for frame, source in zip(frames, avatar, strict=True)) >= 40


def test_a_turned_head_gets_a_mouth_only_while_a_face_is_found(tmp_path):
    """turning.mp4: no face in frames 19-38 (turned away); frames 15, 17 and 18 are found by the profile cascade
    alone."""
    audio = tmp_path / "a.wav"
    write_clip(FIXTURES / "speech.wav", audio, 2.0)  # 50 frames: the avatar once, no ping-pong
    options = RenderOptions(face=FaceOptions(cache_dir=tmp_path / "cache"), model=ModelOptions(device="cpu"))
    state, frames = composited(Job("x", audio, FIXTURES / "turning.mp4", tmp_path / "x.mp4"), options)
    avatar = decode_frames(FIXTURES / "turning.mp4")
    changed = [bool(np.any(frame != source)) for frame, source in zip(frames, avatar, strict=True)]
    assert not any(changed[19:39])  # passed through exactly: no mouth where no face is
    faced = changed[:19] + changed[39:]
    assert sum(faced) >= 0.8 * len(faced) and all(changed[i] for i in (15, 17, 18))  # turned heads too
    assert state.face_coverage == pytest.approx(30 / 50)


# --- face cache ----------------------------------------------------------------------------------------------------


def test_face_detection_runs_once_per_avatar(rendered):
    """portrait.png serves three jobs (two renders with different options): detected once, then from the cache."""
    portrait = str(FIXTURES / "portrait.png")
    assert rendered.detections.count(portrait) == 1
    assert rendered.detections.count(str(FIXTURES / "avatar.mp4")) == 1  # pingpong and loop share it
    assert all(r.status == "succeeded" for r in rendered.records.values())


def test_second_job_gets_the_cached_track(tmp_path):
    options = FaceOptions(cache_dir=tmp_path / "cache")
    info = probe_avatar(FIXTURES / "avatar.mp4")
    first = track_faces(info, 30, options)
    second = track_faces(info, 20, options)
    assert (first.from_cache, second.from_cache) == (False, True)
    assert np.array_equal(first.boxes[:20], second.boxes[:20])


def test_prefetched_frames_keep_their_order_and_their_errors():
    from dhgen.errors import AvatarDecodeError
    from dhgen.pipeline import prefetched

    assert list(prefetched(iter(range(100)), depth=4)) == list(range(100))

    def broken():
        yield from range(3)
        raise AvatarDecodeError("the video ended before frame 3", path="x.mp4")

    got = []
    with pytest.raises(AvatarDecodeError, match="x.mp4"):
        for item in prefetched(broken(), depth=8):
            got.append(item)
    assert got == [0, 1, 2]  # every frame decoded before the error still arrives, then the error


def test_prefetching_stops_when_the_consumer_stops():
    import threading

    from dhgen.pipeline import prefetched

    before = threading.active_count()
    frames = prefetched(iter(range(10_000)), depth=2)
    assert next(frames) == 0
    frames.close()
    assert threading.active_count() == before
