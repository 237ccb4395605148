"""J and F on small masks whose expected values are worked out by hand below."""

from __future__ import annotations

import numpy as np
import pytest

from rvos.metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_radius,
    disk_footprint,
    evaluate_expression,
    frame_scores,
    region_similarity,
)


def box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def pixels(shape: tuple[int, int], coords: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for y, x in coords:
        mask[y, x] = True
    return mask


# A 6x6 frame: diagonal sqrt(72) = 8.49, 0.008 * 8.49 = 0.068 -> dilation radius 1 (a plus sign).
SMALL = (6, 6)
SQUARE = box(SMALL, slice(1, 3), slice(1, 3))  # rows 1-2, cols 1-2
SHIFTED = box(SMALL, slice(1, 3), slice(2, 4))  # rows 1-2, cols 2-3


def test_boundary_of_square_is_offset_towards_the_origin() -> None:
    # A pixel is on the boundary when it differs from its right, lower or lower-right neighbour:
    # the 2x2 square's boundary is the 3x3 block rows 0-2 x cols 0-2 without its centre (1, 1).
    expected = pixels(SMALL, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)])
    np.testing.assert_array_equal(boundary_map(SQUARE), expected)


def test_boundary_at_the_image_edge() -> None:
    # Foreground in the last column of a 3x3 frame. Column 1 differs from its right neighbour;
    # the last column only compares downwards (equal except at the bottom, where the bottom-right
    # pixel is always cleared), and the last row only compares to the right: (2, 1) differs.
    mask = box((3, 3), slice(0, 3), slice(2, 3))
    expected = pixels((3, 3), [(0, 1), (1, 1), (2, 1)])
    np.testing.assert_array_equal(boundary_map(mask), expected)


def test_full_frame_mask_has_no_boundary() -> None:
    assert not boundary_map(np.ones((4, 5), dtype=bool)).any()


def test_radius_from_the_diagonal() -> None:
    assert boundary_radius(0.008, 6, 6) == 1  # ceil(0.068)
    assert boundary_radius(0.008, 100, 100) == 2  # ceil(0.008 * 141.42) = ceil(1.13)
    assert boundary_radius(0.008, 720, 1280) == 12  # ceil(0.008 * 1468.6) = ceil(11.75)
    assert boundary_radius(3, 720, 1280) == 3  # >= 1: pixels


def test_disk_footprint_radius_2() -> None:
    # dy^2 + dx^2 <= 4: (1, 2) has 5 and is left out, unlike a square.
    expected = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(disk_footprint(2), expected)


def test_identical_masks() -> None:
    assert frame_scores(SQUARE, SQUARE) == (1.0, 1.0)


def test_one_pixel_shift_is_within_the_boundary_tolerance() -> None:
    # J: overlap = column 2 (2 pixels), union = columns 1-3 (6 pixels) -> 1/3.
    assert region_similarity(SHIFTED, SQUARE) == pytest.approx(1 / 3, abs=1e-15)
    # F: the shifted boundary (rows 0-2 x cols 1-3 without (1, 2)) has every pixel on or
    # 4-adjacent to a pixel of the square's boundary and vice versa: precision = recall = 1.
    assert boundary_f_measure(SHIFTED, SQUARE) == 1.0


def test_two_pixel_shift_exceeds_the_tolerance() -> None:
    shape = (8, 8)  # diagonal 11.3 -> radius ceil(0.09) = 1
    square = box(shape, slice(1, 3), slice(1, 3))
    shifted = box(shape, slice(1, 3), slice(3, 5))  # cols 3-4: no overlap
    assert region_similarity(shifted, square) == 0.0
    # Square boundary: rows 0-2 x cols 0-2 minus (1, 1); shifted: rows 0-2 x cols 2-4 minus
    # (1, 3). Square boundary pixels within a plus sign of the other: (0,1) (0,2) (1,2) (2,1)
    # (2,2) = 5 of 8; (0,0) (1,0) (2,0) are 2 columns away. By symmetry recall is 5/8 too.
    # F = 2 * (5/8) * (5/8) / (10/8) = 5/8.
    assert boundary_f_measure(shifted, square) == 0.625


def test_tolerance_disk_is_round() -> None:
    # bound_th = 2 pixels. Single pixels at (2, 2) and (4, 3): boundaries are the 2x2 blocks
    # {(1,1), (1,2), (2,1), (2,2)} and {(3,2), (3,3), (4,2), (4,3)}. (1,1) is (2, 1) away from
    # the nearest other-boundary pixel (3,2): 4 + 1 = 5 > 4, outside the disk; the 3 others are
    # inside. Symmetrically (4,3) is unmatched. P = R = 3/4 -> F = 3/4 (a square kernel gives 1).
    shape = (10, 10)
    pred = pixels(shape, [(2, 2)])
    gt = pixels(shape, [(4, 3)])
    assert boundary_f_measure(pred, gt, bound_th=2) == 0.75


def test_empty_ground_truth_with_prediction() -> None:
    empty = np.zeros(SMALL, dtype=bool)
    assert frame_scores(SQUARE, empty) == (0.0, 0.0)


def test_empty_prediction_with_ground_truth() -> None:
    empty = np.zeros(SMALL, dtype=bool)
    assert frame_scores(empty, SQUARE) == (0.0, 0.0)


def test_both_empty() -> None:
    empty = np.zeros(SMALL, dtype=bool)
    assert frame_scores(empty, empty) == (1.0, 1.0)


def test_full_frame_prediction_against_empty_ground_truth() -> None:
    # Neither mask has a boundary, so F takes the both-empty value 1 while J is 0.
    full = np.ones(SMALL, dtype=bool)
    empty = np.zeros(SMALL, dtype=bool)
    assert frame_scores(full, empty) == (0.0, 1.0)


def test_nonzero_values_are_foreground() -> None:
    assert frame_scores(SQUARE.astype(np.uint8) * 255, SQUARE.astype(np.uint8)) == (1.0, 1.0)


def test_expression_means_over_frames() -> None:
    empty = np.zeros(SMALL, dtype=bool)
    # Frames: both empty (J 1, F 1); one-pixel shift (J 1/3, F 1); missed object (J 0, F 0).
    pred = np.stack([empty, SHIFTED, empty])
    gt = np.stack([empty, SQUARE, SQUARE])
    j, f = evaluate_expression(pred, gt)
    assert j == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-15)
    assert f == pytest.approx(2 / 3, abs=1e-15)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differs"):
        region_similarity(np.zeros((2, 3), dtype=bool), np.zeros((3, 2), dtype=bool))
