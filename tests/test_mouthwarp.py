"""The embedded mouthwarp model: it closes the template's own mouth and opens one that follows the openness."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch

from dhgen.composite import paste
from dhgen.models.mouthwarp import MouthWarp

S = 128
MOUTH = (slice(int(0.44 * S), int(0.66 * S)), slice(int(0.30 * S), int(0.70 * S)))  # rows, cols around the lips


def lower_face(seed: int = 0, mouth_open: float = 0.0, light: float = 1.0) -> np.ndarray:
    """A synthetic 128x128 lower-face crop (BGR): shaded skin with pores, lips at the crop's lip line."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, S, dtype=np.float32)[:, None, None]
    skin = np.array([120, 150, 205], np.float32) * (1.05 - 0.2 * ys)
    img = skin + rng.normal(0, 4, (S, S, 3)).astype(np.float32)
    centre = (S // 2, int(0.49 * S))
    cv2.ellipse(img, centre, (int(0.2 * S), int(0.06 * S)), 0, 0, 360, (105, 110, 185), -1, cv2.LINE_AA)
    if mouth_open > 0:
        axes = (int(0.17 * S), max(1, int(0.08 * S * mouth_open)))
        cv2.ellipse(img, centre, axes, 0, 0, 360, (30, 30, 60), -1, cv2.LINE_AA)
    else:
        cv2.line(img, (int(0.31 * S), centre[1]), (int(0.69 * S), centre[1]), (70, 70, 120), 1, cv2.LINE_AA)
    return np.clip(img * light, 0, 255).astype(np.uint8)


def run(model, crops, refs, openness):
    with torch.inference_mode():
        patches, alphas = model(
            torch.from_numpy(np.stack(crops)),
            torch.from_numpy(np.stack(refs)),
            torch.tensor(openness, dtype=torch.float32),
        )
    return patches.numpy(), alphas.numpy()


@pytest.fixture(scope="module")
def model():
    return MouthWarp(S).eval()


def test_same_input_gives_identical_output(model):
    crops = [lower_face(1, mouth_open=0.5), lower_face(2)]
    refs = [lower_face(1), lower_face(2)]
    first = run(model, crops, refs, [0.3, 0.9])
    second = run(MouthWarp(S).eval(), crops, refs, [0.3, 0.9])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_alpha_is_zero_on_the_border_and_outside_the_mouth_and_jaw(model):
    _, alphas = run(model, [lower_face()] * 2, [lower_face()] * 2, [0.0, 1.0])
    assert alphas.shape == (1, model.size, model.size)  # one mask for the batch, whatever the openness: no flicker
    alpha = alphas[0]
    border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
    assert border.max() == 0
    assert alpha[: int(0.2 * S)].max() == 0  # the nose and above are never touched
    assert alpha[: int(0.25 * S), : int(0.25 * S)].max() == 0 and alpha[-int(0.1 * S) :, :8].max() == 0
    assert alpha[MOUTH].min() == 255  # the lips and their surroundings are fully replaced
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
    patches, alphas = run(model, [live], [ref], [0.0])
    out, expected = patches[0][MOUTH].astype(float), ref[MOUTH].astype(float) * 0.8
    assert live[MOUTH].mean() < expected.mean() - 15  # the live mouth is visibly dark ...
    assert abs(out.mean() - expected.mean()) < 3  # ... the output is the closed mouth, relit like the live frame
    assert np.abs(out - expected).mean() < 4


def test_mouth_darkens_monotonically_with_openness(model):
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    for seed in (7, 8):
        crop = lower_face(seed)
        patches, _ = run(model, [crop] * len(levels), [crop] * len(levels), levels)
        luma = [cv2.cvtColor(p, cv2.COLOR_BGR2GRAY)[MOUTH].mean() for p in patches]
        assert all(b < a - 1.0 for a, b in zip(luma, luma[1:], strict=False)), luma
        dark = [(cv2.cvtColor(p, cv2.COLOR_BGR2GRAY)[MOUTH] < 60).sum() for p in patches]
        assert dark[0] == 0 and dark[-1] > 0.08 * patches[0][MOUTH].shape[0] * patches[0][MOUTH].shape[1]


def test_open_mouth_interior_is_dark_and_reddish_at_the_lip_line(model):
    crop = lower_face(9)
    patches, _ = run(model, [crop], [crop], [1.0])
    b, g, r = patches[0][int(0.55 * S), S // 2].astype(int)
    assert r < 120 and r > b and r > g


def test_batch_results_equal_per_item_results(model):
    crops = [lower_face(10, mouth_open=0.7), lower_face(11), lower_face(12, light=0.7)]
    refs = [lower_face(10), lower_face(11), lower_face(13)]
    openness = [0.2, 1.0, 0.55]
    batch = run(model, crops, refs, openness)
    for i in range(len(crops)):
        single = run(model, [crops[i]], [refs[i]], [openness[i]])
        np.testing.assert_array_equal(batch[0][i], single[0][0])
        np.testing.assert_array_equal(batch[1][0], single[1][0])


def test_batch_of_16_is_fast_on_cpu(model):
    crops = [lower_face(i) for i in range(16)]
    openness = list(np.linspace(0, 1, 16))
    run(model, crops, crops, openness)  # warm up
    best = min(_timed(lambda: run(model, crops, crops, openness)) for _ in range(5))
    assert best < 0.15, f"16 crops took {best * 1000:.0f} ms (typically ~15 ms on 2 cores)"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
