"""The conditional fusion rule on crafted masks."""

import numpy as np
import pytest

from rvos.masks import bounding_box_area
from stage3_fusion.fusion import fuse_expression, is_multi_object


def box_mask(rows: tuple[int, int], cols: tuple[int, int], size=(20, 20)) -> np.ndarray:
    """A filled rectangle with inclusive row/col ranges."""
    mask = np.zeros(size, dtype=bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


def test_box_area_uses_index_differences():
    assert bounding_box_area(box_mask((2, 5), (3, 9))) == 3 * 6
    # A single row or a single column spans zero.
    assert bounding_box_area(box_mask((4, 4), (0, 10))) == 0
    assert bounding_box_area(box_mask((0, 10), (7, 7))) == 0
    assert bounding_box_area(np.zeros((5, 5), dtype=bool)) == 0
    # Two blobs: the box spans both.
    two = box_mask((0, 1), (0, 1)) | box_mask((10, 11), (15, 16))
    assert bounding_box_area(two) == 11 * 16


def test_exact_two_thirds_is_not_smaller():
    # area_sam2 * 3 < area_ori * 2 is strict: 2/3 exactly does not count.
    multi, smaller, both = is_multi_object(np.array([9]), np.array([6]))
    assert (smaller, both) == (0, 1) and not multi
    multi, smaller, both = is_multi_object(np.array([9]), np.array([5]))
    assert (smaller, both) == (1, 1) and multi


def test_exactly_half_is_not_multi_object():
    # cnt * 2 > valid is strict: 2 of 4 frames is not a majority, 3 of 4 is.
    stage1 = np.array([30, 30, 30, 30])
    assert is_multi_object(stage1, np.array([1, 1, 30, 30])) == (False, 2, 4)
    assert is_multi_object(stage1, np.array([1, 1, 1, 30])) == (True, 3, 4)


def test_frames_with_an_empty_box_are_not_counted():
    # Area 0 on either side (empty or single row) removes the frame from both counts.
    assert is_multi_object(np.array([0, 30, 30]), np.array([1, 0, 1])) == (True, 1, 1)
    assert is_multi_object(np.array([0, 0]), np.array([0, 0])) == (False, 0, 0)


def test_fuse_multi_object_takes_the_union():
    big = box_mask((0, 15), (0, 15))
    small = box_mask((0, 3), (0, 3))
    stage1 = np.stack([big, big, big])
    sam2 = np.stack([small, small, big])
    result = fuse_expression(stage1, sam2)
    assert result.multi_object and (result.frames_sam2_smaller, result.frames_both_nonempty) == (
        2,
        3,
    )
    np.testing.assert_array_equal(result.masks, stage1 | sam2)


def test_fuse_single_object_keeps_sam2_alone():
    big = box_mask((0, 15), (0, 15))
    similar = box_mask((1, 15), (1, 15))
    stage1 = np.stack([big, big])
    sam2 = np.stack([similar, np.zeros_like(big)])
    result = fuse_expression(stage1, sam2)
    assert not result.multi_object
    assert (result.frames_sam2_smaller, result.frames_both_nonempty) == (0, 1)
    np.testing.assert_array_equal(result.masks, sam2)


def test_fuse_empty_inputs_give_empty_output():
    empty = np.zeros((3, 8, 8), dtype=bool)
    result = fuse_expression(empty, empty)
    assert not result.multi_object and not result.masks.any()


def test_fuse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        fuse_expression(np.zeros((2, 4, 4), bool), np.zeros((3, 4, 4), bool))
