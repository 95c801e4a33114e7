import numpy as np
import pytest

from dhgen.errors import UsageError
from dhgen.models import CropBatch, PatchBatch, concat_patches, get_family, merge_batches, split_patches


def _crops(n, value):
    return CropBatch(
        np.full((n, 4, 4, 3), value, np.uint8),
        np.full((1, 4, 4, 3), value + 1, np.uint8),
        np.full(n, value / 10, np.float32),
    )


def test_merge_repeats_a_shared_reference_for_each_crop():
    merged = merge_batches([_crops(2, 1), _crops(3, 5)])
    assert merged.crops.shape == merged.refs.shape == (5, 4, 4, 3)
    assert [int(r[0, 0, 0]) for r in merged.refs] == [2, 2, 6, 6, 6]
    assert merged.cond.tolist() == pytest.approx([0.1, 0.1, 0.5, 0.5, 0.5])


def test_split_gives_each_batch_its_patches_and_the_shared_alpha():
    patches = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    alpha = np.full((1, 4, 4), 255, np.uint8)
    first, second = split_patches(PatchBatch(patches, alpha), [2, 3])
    assert first.patches[:, 0, 0, 0].tolist() == [0, 1] and second.patches[:, 0, 0, 0].tolist() == [2, 3, 4]
    assert second.alpha(2) is not None and np.array_equal(second.alpha(2), alpha[0])


def test_concat_keeps_a_shared_alpha_shared_and_expands_mixed_ones():
    shared = np.full((1, 4, 4), 7, np.uint8)
    a, b = PatchBatch(np.zeros((2, 4, 4, 3), np.uint8), shared), PatchBatch(np.ones((1, 4, 4, 3), np.uint8), shared)
    assert concat_patches([a, b]).alphas.shape == (1, 4, 4)
    own = PatchBatch(np.ones((1, 4, 4, 3), np.uint8), np.full((1, 4, 4), 9, np.uint8))
    mixed = concat_patches([a, own])
    assert mixed.alphas.shape == (3, 4, 4) and mixed.alphas[:, 0, 0].tolist() == [7, 7, 9]


def test_unknown_model_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError, match="unknown model") as err:
        get_family("wav3lip")
    assert "mouthwarp" in err.value.hint
