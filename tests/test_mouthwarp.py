"""The embedded mouthwarp model: it finds the reference's mouth, closes the template's own mouth and opens one
that follows the openness, shaded like a mouth; plain numpy/OpenCV, no torch."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dhgen.composite import paste
from dhgen.models import CropBatch
from dhgen.models.mouthwarp.warp import MouthWarp, alpha_mask, find_mouth

S = 128
MOUTH = (slice(int(0.44 * S), int(0.66 * S)), slice(int(0.30 * S), int(0.70 * S)))  # rows, cols around the lips


def lower_face(
    seed: int = 0, mouth_open: float = 0.0, light: float = 1.0, lip_y: float = 0.49, tilt: float = 0.0
) -> np.ndarray:
    """A synthetic 128x128 lower-face crop (BGR): shaded skin with pores, lips meeting at `lip_y`, turned by
    `tilt` degrees (the right corner lower for a positive tilt)."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, S, dtype=np.float32)[:, None, None]
    skin = np.array([120, 150, 205], np.float32) * (1.05 - 0.2 * ys)
    img = skin + rng.normal(0, 4, (S, S, 3)).astype(np.float32)
    centre = (S // 2, int(lip_y * S))
    cv2.ellipse(img, centre, (int(0.2 * S), int(0.06 * S)), tilt, 0, 360, (105, 110, 185), -1, cv2.LINE_AA)
    if mouth_open > 0:
        axes = (int(0.17 * S), max(1, int(0.08 * S * mouth_open)))
        cv2.ellipse(img, centre, axes, tilt, 0, 360, (30, 30, 60), -1, cv2.LINE_AA)
    else:
        dx, dy = 0.19 * S * np.cos(np.radians(tilt)), 0.19 * S * np.sin(np.radians(tilt))
        ends = (int(centre[0] - dx), int(centre[1] - dy)), (int(centre[0] + dx), int(centre[1] + dy))
        cv2.line(img, *ends, (70, 70, 120), 1, cv2.LINE_AA)
    return np.clip(img * light, 0, 255).astype(np.uint8)


def run(model, crops, refs, openness):
    out = model.predict(CropBatch(np.stack(crops), np.stack(refs), np.asarray(openness, np.float32)))
    return out.patches, out.alphas


def luma(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)


@pytest.fixture(scope="module")
def model():
    return MouthWarp(S)


def test_same_input_gives_identical_output(model):
    crops = [lower_face(1, mouth_open=0.5), lower_face(2)]
    refs = [lower_face(1), lower_face(2)]
    first = run(model, crops, refs, [0.3, 0.9])
    second = run(MouthWarp(S), crops, refs, [0.3, 0.9])  # a fresh model: no cached geometry
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_alpha_is_zero_on_the_border_and_outside_the_mouth_and_jaw(model):
    _, alphas = run(model, [lower_face()] * 2, [lower_face()] * 2, [0.0, 1.0])
    assert alphas.shape == (1, S, S)  # one mask for the batch, whatever the openness: no flicker
    alpha = alphas[0]
    np.testing.assert_array_equal(alpha, alpha_mask(S))  # ... and whatever the reference
    border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
    assert border.max() == 0
    assert alpha[: int(0.2 * S)].max() == 0  # the nose and above are never touched
    assert alpha[: int(0.25 * S), : int(0.25 * S)].max() == 0 and alpha[-int(0.1 * S) :, :8].max() == 0
    assert alpha[int(0.33 * S) : int(0.7 * S), int(0.35 * S) : int(0.65 * S)].min() == 255  # wherever the lips are
    assert alpha[int(0.36 * S) : int(0.75 * S), int(0.25 * S) : int(0.75 * S)].min() > 230  # ... and their corners
    assert alpha[int(0.8 * S), S // 2] == 255  # ... down into the chin


def test_paste_leaves_the_frame_outside_the_mask_bit_exact(model):
    frame = np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    rect = (60, 80, 220, 240)
    patches, alphas = run(model, [lower_face()], [lower_face(5)], [1.0])
    out = frame.copy()
    paste(out, rect, patches[0], alphas[0])
    x0, y0, x1, y1 = rect
    untouched = np.ones(frame.shape[:2], bool)
    untouched[y0:y1, x0:x1] = cv2.resize(alphas[0], (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) == 0
    assert untouched[y0 : y0 + int(0.2 * (y1 - y0)), x0:x1].all()  # the top of the rectangle ...
    assert untouched[y0:y1, x0].all() and untouched[y1 - 1, x0:x1].all()  # ... and its border stay as they are
    np.testing.assert_array_equal(out[untouched], frame[untouched])
    assert (out[~untouched] != frame[~untouched]).any()


def test_openness_zero_with_a_still_reference_returns_the_crop(model):
    crop = lower_face(4)
    patches, _ = run(model, [crop], [crop], [0.0])
    assert np.abs(patches[0].astype(int) - crop).max() <= 1


def test_openness_zero_closes_a_template_mouth_that_was_open_and_keeps_its_light(model):
    ref = lower_face(6)  # closed mouth, full light
    live = lower_face(6, mouth_open=1.0, light=0.8)  # the template person talks, under dimmer light
    patches, _ = run(model, [live], [ref], [0.0])
    out, expected = patches[0][MOUTH].astype(float), ref[MOUTH].astype(float) * 0.8
    assert live[MOUTH].mean() < expected.mean() - 15  # the live mouth is visibly dark ...
    assert abs(out.mean() - expected.mean()) < 3  # ... the output is the closed mouth, relit like the live frame
    assert np.abs(out - expected).mean() < 4


def test_the_templates_own_open_mouth_does_not_darken_the_face_around_it(model):
    """The live mouth opens wider than the light estimate's hole: it must not cast a shadow on the relit lips."""
    ref = lower_face(14)
    live = lower_face(14)
    cv2.ellipse(live, (S // 2, int(0.45 * S)), (int(0.2 * S), int(0.16 * S)), 0, 0, 360, (25, 25, 50), -1)
    patches, _ = run(model, [live], [ref], [0.0])
    around = (slice(int(0.28 * S), int(0.7 * S)), slice(int(0.25 * S), int(0.75 * S)))
    assert np.abs(patches[0][around].astype(float) - ref[around]).mean() < 4


def test_mouth_darkens_monotonically_with_openness(model):
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    for seed in (7, 8):
        crop = lower_face(seed)
        patches, _ = run(model, [crop] * len(levels), [crop] * len(levels), levels)
        mouth = [luma(p)[MOUTH] for p in patches]
        means = [m.mean() for m in mouth]
        assert all(b < a - 1.0 for a, b in zip(means, means[1:], strict=False)), means
        dark = [(m < 60).sum() for m in mouth]
        assert dark[0] == 0 and dark[-1] > 0.06 * mouth[0].size


def test_open_mouth_is_a_dark_red_of_the_face_not_black(model):
    crop = lower_face(9)
    patches, _ = run(model, [crop], [crop], [1.0])
    b, g, r = patches[0][int(0.53 * S), S // 2].astype(int)  # the middle of the opening
    assert r < 120 and r > b + 10 and r > g + 10  # dark and reddish
    assert max(b, g, r) > 20  # ... but not black


def test_the_inside_follows_the_faces_light(model):
    bright, dim = lower_face(10), lower_face(10, light=0.55)
    patches, _ = run(model, [bright, dim], [bright, bright], [1.0, 1.0])  # one reference, two lights
    gap = (slice(int(0.5 * S), int(0.58 * S)), slice(int(0.42 * S), int(0.58 * S)))
    ratio = luma(patches[1])[gap].mean() / luma(patches[0])[gap].mean()
    assert 0.45 < ratio < 0.65  # the inside dims with the face (0.55), it is not a fixed colour


def test_opening_has_soft_edges_teeth_and_a_tongue(model):
    crop = lower_face(11)
    patch = run(model, [crop], [crop], [1.0])[0][0]
    rows = slice(int(0.42 * S), int(0.66 * S))  # top to bottom through the middle of the mouth
    column = luma(patch)[rows, S // 2]
    redness = patch[rows, S // 2, 2].astype(int) - patch[rows, S // 2, 0]
    darkest = int(column.argmin())
    teeth = (column > 80) & (redness < 25)  # bright and grey, where lips and skin are red (~80)
    assert teeth[:darkest].any() and not teeth[darkest:].any()  # upper teeth, above the dark cavity
    below = slice(darkest, None)
    tongue = (redness[below] > 50) & (column[below] < 95)  # red, darker than the lower lip
    assert column[below][tongue].max() > column[darkest] + 35  # a lit tongue rising out of the dark
    steps = np.abs(np.diff(luma(patch)[rows, int(0.35 * S) : int(0.65 * S)], axis=0))
    assert steps.max() < 0.85 * (column.max() - column.min())  # no edge jumps in one pixel: anti-aliased


def test_the_opening_changes_shape_with_the_openness(model):
    """Barely open is a slit with pointed corners; wide open is rounder, not the same crescent scaled."""
    crop = lower_face(12)
    patches, _ = run(model, [crop] * 2, [crop] * 2, [0.3, 1.0])
    fill = []
    for p in patches:
        height = np.clip(1 - luma(p) / luma(crop), 0, None).sum(axis=0)  # how much darker, per column
        fill.append(height[int(0.38 * S) : int(0.62 * S)].mean() / height[S // 2])  # how far the height holds out
    assert fill[1] > fill[0] + 0.14, fill


def test_the_opening_follows_a_mouth_that_is_not_on_the_default_line(model):
    high = lower_face(13, lip_y=0.40, tilt=8)
    shape = find_mouth(high)
    assert abs(shape.seam - 0.40) < 0.02 and shape.tilt > 0.05  # found, and found tilted
    patch = run(model, [high], [high], [1.0])[0][0]
    dark = luma(patch) < 0.5 * luma(high)
    rows = np.flatnonzero(dark[:, S // 2])
    assert 0.38 * S < rows.min() and rows.max() < 0.55 * S  # the gap opens from the lips that are there
    left, right = (np.flatnonzero(dark[:, int(f * S)]).mean() for f in (0.40, 0.60))
    assert right > left + 1  # ... and follows their tilt


def test_a_reference_without_a_mouth_gets_the_default_shape():
    flat = np.full((S, S, 3), 150, np.uint8)
    assert find_mouth(flat).seam == pytest.approx(0.49)


def test_batch_results_equal_per_item_results(model):
    crops = [lower_face(10, mouth_open=0.7), lower_face(11), lower_face(12, light=0.7)]
    refs = [lower_face(10), lower_face(11), lower_face(13)]
    openness = [0.2, 1.0, 0.55]
    batch = run(model, crops, refs, openness)
    for i in range(len(crops)):
        single = run(MouthWarp(S), [crops[i]], [refs[i]], [openness[i]])
        np.testing.assert_array_equal(batch[0][i], single[0][0])
        np.testing.assert_array_equal(batch[1][0], single[1][0])


def test_one_reference_for_the_batch_equals_it_repeated(model):
    crops = [lower_face(15, light=0.9), lower_face(16)]
    ref = lower_face(15)
    shared = model.predict(CropBatch(np.stack(crops), ref[None], np.float32([0.4, 0.8])))
    repeated = run(model, crops, [ref, ref], [0.4, 0.8])
    np.testing.assert_array_equal(shared.patches, repeated[0])


def test_wrong_crop_size_and_empty_batch():
    model = MouthWarp(S)
    with pytest.raises(ValueError, match="128"):
        model.predict(CropBatch(np.zeros((2, 96, 96, 3), np.uint8), np.zeros((1, 96, 96, 3), np.uint8), np.zeros(2)))
    empty = model.predict(CropBatch(np.zeros((0, S, S, 3), np.uint8), np.zeros((1, S, S, 3), np.uint8), np.zeros(0)))
    assert empty.patches.shape == (0, S, S, 3) and empty.alphas.shape == (0, S, S)
