"""Face tracking: the astronaut is found and followed, no face is a typed error, tracks are cached per avatar; with
several faces the chosen one is followed (never swapped for the other), turned heads are held by the profile cascade
as long as it finds them and dropped where no face is."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from conftest import FIXTURES, fixture_script

from dhgen.avatar import iter_first_frames, probe_avatar
from dhgen.errors import NoFaceError
from dhgen.face import cascade_faces, detect_track, interpolate_boxes, mouth_openness, track_faces
from dhgen.options import FaceOptions


def expected_face_centres(n: int, size: int = 256) -> np.ndarray:
    """Where the portrait's face centre lands in each avatar.mp4 frame, from the fixture script's camera motion."""
    script = fixture_script("make_video_fixtures")
    portrait = cv2.imread(str(FIXTURES / "portrait.png"))
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY), 1.1, 5)
    x, y, w, h = max(faces, key=lambda b: b[2])
    out = []
    for t in range(n):
        cx, cy, scale = script.camera(t, n, portrait.shape)  # frame pixel p shows portrait pixel c + scale * (p - S/2)
        out.append(((x + w / 2 - cx) / scale + size / 2, (y + h / 2 - cy) / scale + size / 2))
    return np.array(out)


@pytest.fixture
def options(tmp_path) -> FaceOptions:
    return FaceOptions(cache_dir=tmp_path / "faces")


def centres(boxes: np.ndarray) -> np.ndarray:
    return boxes[:, :2] + boxes[:, 2:] / 2


def test_astronaut_is_found_in_every_frame_and_followed(options):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    track = track_faces(info, 50, options)
    assert track.boxes.shape == (50, 4) and track.boxes.dtype == np.float32
    assert not np.isnan(track.boxes).any()
    tracked, expected = centres(track.boxes), expected_face_centres(50)
    assert np.abs(tracked - expected).max() < 4.0  # the camera drifts +-10 px sideways, +-5 px up and down
    assert np.ptp(tracked[:, 0]) > 12  # the box really moves with the face
    assert np.corrcoef(tracked[:, 0], expected[:, 0])[0, 1] > 0.9
    assert np.corrcoef(tracked[:, 1], expected[:, 1])[0, 1] > 0.8
    assert 60 < track.boxes[:, 2].mean() < 95  # the face is ~80 px in a 256 px frame


def test_reference_frame_is_a_detected_frame_of_the_avatar(options):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    track = track_faces(info, 50, options)
    frames = dict(iter_first_frames(info, 50))
    assert track.reference_index % options.stride == 0 or track.reference_index == 49
    assert np.array_equal(track.reference_frame, frames[track.reference_index])
    assert not np.isnan(track.boxes[track.reference_index]).any()


def test_reference_prefers_the_closed_mouth():
    portrait = cv2.imread(str(FIXTURES / "portrait.png"))
    open_mouth = portrait.copy()
    cv2.ellipse(open_mouth, (144, 121), (13, 8), 0, 0, 360, (25, 20, 30), -1)  # a dark, open mouth
    frames = [(0, open_mouth), (5, portrait), (10, open_mouth)]
    track = detect_track(frames, 11, FaceOptions(stride=5))
    assert track.reference_index == 5
    assert track.reference_frame is not None and np.array_equal(track.reference_frame, portrait)


def test_mouth_openness_sees_a_dark_mouth():
    face = np.full((100, 100), 170, np.uint8)
    closed = mouth_openness(face, (0, 0, 100, 100))
    face[75:90, 35:65] = 20
    assert mouth_openness(face, (0, 0, 100, 100)) > closed + 0.2


@pytest.mark.parametrize("name", ["avatar_rotated.mp4", "avatar_odd.mp4", "avatar.webm", "portrait.png"])
def test_face_found_in_other_avatars(name, options):
    # The Haar cascade finds only upright faces: on avatar_rotated.mp4 this checks the rotation's direction.
    info = probe_avatar(FIXTURES / name)
    track = track_faces(info, 1000, options)
    assert len(track.boxes) == info.n_frames and not np.isnan(track.boxes).any()
    x, y, w, h = np.nanmean(track.boxes, axis=0)
    assert 0 <= x and x + w <= info.width and 0 <= y and y + h <= info.height
    assert y + h / 2 < info.height * 0.6  # the face is in the upper part of an upright portrait


def test_real_footage_is_tracked_without_false_hits_and_its_reference_mouth_is_closed(options):
    """carphone.mp4 (a man talking in a car): around frame 60 his mouth is wide open and the cascade misses
    his face but fires on a patch a third its size; that box must neither enter the track nor be the
    reference (it would make the wide-open mouth the "closed" one)."""
    info = probe_avatar(FIXTURES / "carphone.mp4")
    track = track_faces(info, info.n_frames, options)
    assert not np.isnan(track.boxes).any()
    sizes = track.boxes[:, 2]
    assert sizes.min() > 0.85 * np.median(sizes) and sizes.max() < 1.2 * np.median(sizes)
    assert not 54 <= track.reference_index <= 64  # frames where his mouth is open
    assert abs(track.boxes[track.reference_index, 2] - np.median(sizes)) < 0.15 * np.median(sizes)


def test_a_detection_much_smaller_than_the_tracked_face_is_dropped():
    portrait = cv2.imread(str(FIXTURES / "portrait.png"))
    small = cv2.resize(portrait, None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)
    shrunk = np.zeros_like(portrait)
    shrunk[: small.shape[0], : small.shape[1]] = small  # the same face, suddenly 40 % of its size
    track = detect_track([(0, portrait), (5, shrunk), (10, portrait)], 11, FaceOptions(stride=5, smooth=0))
    assert np.allclose(track.boxes[5], track.boxes[0])  # frame 5 interpolates its neighbours, no 40 % box
    assert track.reference_index in (0, 10)


def test_a_larger_but_less_confident_decoy_is_not_taken_for_the_face():
    """portrait_decoy.jpg (the astronaut at 320 px): the cascade also fires on the helmet beside her, on a box
    larger than her face; the track must start on her face (left of centre, in the upper half)."""
    portrait = cv2.imread(str(FIXTURES / "portrait_decoy.jpg"))
    x, y, w, h = detect_track([(0, portrait)], 1, FaceOptions(stride=1, smooth=0)).boxes[0]
    assert x + w / 2 < 160 and y + h / 2 < 120 and 60 < w < 90


def test_no_face_is_a_no_face_error_naming_the_file(options):
    info = probe_avatar(FIXTURES / "noface.mp4")
    with pytest.raises(NoFaceError) as err:
        track_faces(info, 10, options)
    assert "noface.mp4" in err.value.message


def test_second_track_comes_from_cache(options):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    first = track_faces(info, 50, options)
    second = track_faces(info, 50, options)
    assert not first.from_cache and second.from_cache
    assert np.array_equal(first.boxes, second.boxes)
    assert second.reference_index == first.reference_index
    assert np.array_equal(second.reference_frame, first.reference_frame)
    assert len(list(options.cache_dir.glob("*.npz"))) == 1
    assert not list(options.cache_dir.glob("*.tmp"))


def test_cache_lives_under_xdg_cache_home_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    track_faces(probe_avatar(FIXTURES / "portrait.png"), 1, FaceOptions())
    assert list((tmp_path / "xdg" / "dhgen").glob("*.npz"))


def test_cache_covering_fewer_frames_is_not_used(options):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    assert not track_faces(info, 20, options).from_cache
    assert track_faces(info, 10, options).from_cache  # covers 20 >= 10
    longer = track_faces(info, 50, options)
    assert not longer.from_cache and len(longer.boxes) == 50
    assert track_faces(info, 50, options).from_cache


def test_cache_is_keyed_by_content_and_settings(tmp_path, options):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    track_faces(info, 50, options)
    assert not track_faces(info, 50, FaceOptions(stride=3, cache_dir=options.cache_dir)).from_cache
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes((FIXTURES / "avatar.mp4").read_bytes())
    assert track_faces(probe_avatar(copy), 50, options).from_cache  # same bytes, other name: same track


def test_corrupt_cache_entry_is_ignored_and_rewritten(options):
    info = probe_avatar(FIXTURES / "avatar.mp4")
    good = track_faces(info, 50, options)
    (entry,) = options.cache_dir.glob("*.npz")
    entry.write_bytes(b"PK\x03\x04 not really a zip file")
    again = track_faces(info, 50, options)
    assert not again.from_cache and np.array_equal(again.boxes, good.boxes)
    assert track_faces(info, 50, options).from_cache


def test_unwritable_cache_still_tracks(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    track = track_faces(probe_avatar(FIXTURES / "portrait.png"), 1, FaceOptions(cache_dir=blocker / "faces"))
    assert not track.from_cache and len(track.boxes) == 1


# --- interpolation (pure) ------------------------------------------------------------------------------------------


def test_boxes_are_interpolated_between_detections():
    boxes = interpolate_boxes({0: (0, 0, 10, 10), 5: (10, 20, 10, 10)}, 6, stride=5, smooth=0.0)
    assert np.allclose(boxes[:, 0], [0, 2, 4, 6, 8, 10])
    assert np.allclose(boxes[:, 1], [0, 4, 8, 12, 16, 20])


def test_frames_far_from_any_detection_are_nan():
    boxes = interpolate_boxes({0: (0, 0, 10, 10), 20: (50, 0, 10, 10)}, 30, stride=5, smooth=0.0)
    missing = np.isnan(boxes).any(axis=1)
    assert missing.tolist() == [i not in range(0, 6) and i not in range(15, 26) for i in range(30)]
    assert np.allclose(boxes[3], (0, 0, 10, 10))  # across a long gap a frame keeps its nearer detection
    assert np.allclose(boxes[17], (50, 0, 10, 10))


def test_smoothing_removes_jitter_but_keeps_a_steady_motion():
    idx = np.arange(0, 100, 5)
    sizes = 80 + 4.0 * (-1) ** np.arange(len(idx))  # Haar boxes jump in size around a steady centre
    found = {int(i): (i + 40 - s / 2, 10.0, float(s), float(s)) for i, s in zip(idx, sizes, strict=True)}
    boxes = interpolate_boxes(found, 96, stride=5, smooth=0.6)
    assert np.allclose(centres(boxes)[:, 0], np.arange(96) + 40, atol=0.5)  # the moving centre follows
    assert np.ptp(boxes[:, 2]) < 0.5 * np.ptp(sizes)  # the size jitter is damped


def test_frames_a_miss_separates_from_their_detection_are_nan():
    """Beyond a bridged gap, a detection's box reaches only up to a frame examined without the face."""
    found = {i: (10.0, 10.0, 20.0, 20.0) for i in range(0, 8)} | {i: (10.0, 10.0, 20.0, 20.0) for i in range(30, 40)}
    boxes = interpolate_boxes(found, 40, stride=5, smooth=0.0, missed={8, 10, 15, 20, 25, 29})
    assert np.isnan(boxes[:, 0]).tolist() == [8 <= i <= 29 for i in range(40)]
    without = interpolate_boxes(found, 40, stride=5, smooth=0.0)  # no frame known to lack the face
    assert not np.isnan(without[8:13]).any() and not np.isnan(without[25:30]).any()
    bridged = interpolate_boxes({0: found[0], 9: found[0]}, 10, stride=5, smooth=0.0, missed={4, 5})
    assert not np.isnan(bridged).any()  # a miss inside a gap of at most two strides is bridged


# --- which face --------------------------------------------------------------------------------------------------

TWO_FACES = FIXTURES / "two_faces.jpg"  # the portrait (left, larger) and its mirror image (right, surer)


def chosen_box(choice: str, options: FaceOptions) -> np.ndarray:
    track = track_faces(probe_avatar(TWO_FACES), 1, dataclasses.replace(options, choice=choice))
    return track.boxes[0]


@pytest.mark.parametrize(
    ("choice", "side"),
    [("auto", "right"), ("largest", "left"), ("center", "left"), ("left", "left"), ("right", "right")]
    + [("0", "left"), ("1", "right"), ("400,100", "right"), ("140,90", "left")],
)
def test_each_choice_names_its_face(choice, side, options):
    x, y, w, h = chosen_box(choice, options)
    assert (x + w / 2 < 256) == (side == "left"), (choice, x)
    assert w > 70 if side == "left" else 55 < w < 70  # the left face is the larger one


def test_record_says_which_face_among_those_found(options):
    track = track_faces(probe_avatar(TWO_FACES), 1, dataclasses.replace(options, choice="right"))
    record = track.record("right")
    assert record["choice"] == "right" and record["frame"] == 0
    left, right = record["faces_found"]
    assert left[0] < 200 < 300 < right[0]  # left to right
    assert record["box_at_first_frame"] == right
    assert all(isinstance(v, int) for v in right)


@pytest.mark.parametrize("choice", ["2", "10,10"])
def test_a_choice_that_names_no_face_is_a_no_face_error_saying_what_was_found(choice, options):
    with pytest.raises(NoFaceError) as err:
        chosen_box(choice, options)
    message = err.value.message
    assert "two_faces.jpg" in message and repr(choice) in message
    assert "2 face(s) found in avatar frame 0" in message
    assert "(106, 52, 79, 79)" in message and "(368, 73, 62, 62)" in message  # where they are, x y w h
    assert "x,y" in err.value.hint and "left" in err.value.hint


def test_the_chosen_face_is_kept_by_position_when_the_faces_pass_each_other(options):
    """two_faces_moving.mp4: the portrait (top row) moves right, its mirror image (bottom row) left; half-way they
    pass. `left` names the portrait at the start and must stay on it (the right-hand face at the end)."""
    script = fixture_script("make_face_fixtures")
    info = probe_avatar(FIXTURES / "two_faces_moving.mp4")
    for choice, tile in (("left", 0), ("right", 1), ("auto", 1)):
        track = track_faces(info, info.n_frames, dataclasses.replace(options, choice=choice))
        assert not np.isnan(track.boxes).any()
        for t, (cx, cy) in enumerate(centres(track.boxes)):
            x, y = script.tile_positions(t)[tile]
            assert x < cx < x + script.TILE and y < cy < y + script.TILE, (choice, t)
    first, last = (script.tile_positions(t)[0][0] for t in (0, info.n_frames - 1))
    assert first < 100 < 250 < last  # the portrait really ends on the other side


def test_cache_is_keyed_by_the_choice(options):
    left, right = (dataclasses.replace(options, choice=c) for c in ("left", "right"))
    info = probe_avatar(TWO_FACES)
    first = track_faces(info, 1, left)
    other = track_faces(info, 1, right)
    assert not other.from_cache and other.boxes[0, 0] > first.boxes[0, 0]
    again = track_faces(info, 1, left)
    assert again.from_cache and np.array_equal(again.boxes, first.boxes)
    assert again.record("left") == first.record("left")  # the faces found come back from the cache too


def test_a_chosen_face_that_goes_away_is_not_replaced_by_the_other_one(options):
    """The left face of two_faces.jpg leaves the picture for 30 frames and comes back; the right one stays. The
    track of `left` has no box while it is gone (none pasted onto the other face), and takes it up again."""
    both = cv2.imread(str(TWO_FACES))
    right_only = both.copy()
    right_only[:, :288] = both[0, 0]  # the background colour
    frames = [(i, right_only if 10 <= i < 40 else both) for i in range(0, 50, 5)] + [(49, both)]
    track = detect_track(frames, 50, dataclasses.replace(options, choice="left", smooth=0))
    has_face = ~np.isnan(track.boxes[:, 0])
    assert has_face.tolist() == [not 10 <= i <= 35 for i in range(50)]  # up to a stride from where it was seen
    assert (centres(track.boxes[has_face])[:, 0] < 256).all()  # always the left face


def test_a_lone_face_that_comes_back_elsewhere_is_taken_up_again(options):
    """One person, who leaves and comes back on the other side of the picture (a cut): with no other face to
    confuse it with, the track follows."""
    portrait = cv2.imread(str(FIXTURES / "portrait.png"))
    left = np.full((288, 576, 3), portrait[0, 0], np.uint8)
    left[:, :288] = portrait
    right, empty = left[:, ::-1].copy(), np.full_like(left, portrait[0, 0])
    frames = [(i, left if i < 10 else empty if i < 40 else right) for i in range(0, 50, 5)] + [(49, right)]
    track = detect_track(frames, 50, dataclasses.replace(options, smooth=0))
    assert track.record("auto")["faces_found"] == [track.record("auto")["box_at_first_frame"]]
    assert (~np.isnan(track.boxes[:, 0])).tolist() == [not 10 <= i <= 35 for i in range(50)]
    assert centres(track.boxes[:10])[:, 0].max() < 288 < centres(track.boxes[36:])[:, 0].min()


# --- turned heads ------------------------------------------------------------------------------------------------


def test_a_turning_head_is_held_by_the_profile_cascade_and_dropped_where_no_face_is(options):
    """turning.mp4: in frames 15, 17, 18 and 39 the head is turned so far that the frontal cascade misses it (the
    profile one does not); frames 19-38 show no face at all."""
    script = fixture_script("make_face_fixtures")
    info = probe_avatar(FIXTURES / "turning.mp4")
    frames = dict(iter_first_frames(info, info.n_frames))
    frontal = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    assert all(len(cascade_faces(frontal, cv2.cvtColor(frames[i], cv2.COLOR_BGR2GRAY))) == 0 for i in (15, 17, 18, 39))
    track = track_faces(info, info.n_frames, options)
    has_face = ~np.isnan(track.boxes[:, 0])
    assert has_face.tolist() == [not 19 <= i <= 38 for i in range(50)]
    assert [script.ANGLES[i] for i in range(50) if not has_face[i]] == [-84] * 20
    x, y, w, h = track.boxes[15]  # a profile box where the face is
    assert 100 < x + w / 2 < 180 and 60 < y + h / 2 < 120
    assert script.ANGLES[track.reference_index] == 0  # the closed-mouth reference is a frontal view
