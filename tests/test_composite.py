"""Crop and paste: the crop is the rectangle's picture; a paste changes pixels only where the alpha is non-zero."""

import cv2
import numpy as np

from dhgen.composite import extract_crop, feather_mask, paste


def noise_frame(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_extract_crop_is_the_rectangle_resized():
    frame = noise_frame()
    rect = (30, 20, 94, 84)  # 64 x 64
    assert np.array_equal(extract_crop(frame, rect, 64), frame[20:84, 30:94])
    smooth = cv2.GaussianBlur(frame, (0, 0), 6)
    for size in (32, 128):  # down- and upscaled: the same picture
        crop = extract_crop(smooth, rect, size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        back = cv2.resize(crop, (64, 64), interpolation=cv2.INTER_LINEAR)
        assert np.abs(back.astype(int) - smooth[20:84, 30:94]).mean() < 1.5


def test_extract_crop_keeps_channel_order_and_orientation():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[:, 50:, 2] = 255  # right half red (BGR)
    crop = extract_crop(frame, (25, 25, 75, 75), 20)
    assert crop[10, 2].tolist() == [0, 0, 0] and crop[10, 17].tolist() == [0, 0, 255]


def test_paste_with_full_alpha_replaces_the_rectangle_only():
    frame = noise_frame()
    before = frame.copy()
    rect = (40, 30, 104, 94)
    patch = np.full((64, 64, 3), (10, 20, 30), np.uint8)
    paste(frame, rect, patch, np.full((64, 64), 255, np.uint8))
    assert (frame[30:94, 40:104] == (10, 20, 30)).all()
    outside = np.ones(frame.shape[:2], bool)
    outside[30:94, 40:104] = False
    assert np.array_equal(frame[outside], before[outside])


def test_paste_with_zero_alpha_changes_nothing():
    frame = noise_frame()
    before = frame.copy()
    paste(frame, (10, 10, 90, 90), np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))
    assert np.array_equal(frame, before)


def test_paste_keeps_exact_pixels_where_alpha_is_zero_even_between_masked_parts():
    """Two blobs of alpha with a zero gap: the gap (inside the blended bounding box) stays bit-exact."""
    frame = noise_frame()
    before = frame.copy()
    rect = (20, 20, 116, 116)  # 96 x 96, patch 48 x 48 is upscaled
    alpha = np.zeros((48, 48), np.uint8)
    alpha[5:15, 5:15] = 255
    alpha[30:44, 30:44] = 128
    patch = np.full((48, 48, 3), 255, np.uint8)
    paste(frame, rect, patch, alpha)
    full = np.zeros(frame.shape[:2], np.uint8)
    full[20:116, 20:116] = cv2.resize(alpha, (96, 96), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(frame[full == 0], before[full == 0])
    assert (frame[full == 255] == 255).all()
    changed = (frame != before).any(axis=2)
    assert changed[full > 0].mean() > 0.9  # the blend did happen where the alpha says so


def test_half_alpha_blends_halfway():
    frame = np.zeros((40, 40, 3), np.uint8)
    paste(frame, (0, 0, 40, 40), np.full((40, 40, 3), 200, np.uint8), np.full((40, 40), 128, np.uint8))
    assert np.abs(frame.astype(int) - 100).max() <= 1


def test_paste_into_an_empty_rectangle_is_a_no_op():
    frame = noise_frame()
    before = frame.copy()
    paste(frame, (50, 50, 50, 80), np.zeros((16, 16, 3), np.uint8), np.full((16, 16), 255, np.uint8))
    assert np.array_equal(frame, before)


def test_feather_mask_is_opaque_inside_and_zero_on_the_border_and_above_top():
    mask = feather_mask(96, top=0.5)
    assert mask.shape == (96, 96) and mask.dtype == np.uint8
    assert (mask[0] == 0).all() and (mask[-1] == 0).all() and (mask[:, 0] == 0).all() and (mask[:, -1] == 0).all()
    assert (mask[:48] == 0).all()
    assert (mask[70, 20:76] == 255).all()
    row = mask[72, :48].astype(int)  # soft ramp from the left edge
    assert (np.diff(row) >= 0).all() and 0 < row[3] < 255
