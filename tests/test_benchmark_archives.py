"""Archive member layouts of the other benchmarks: exact names, PNG modes and values."""

import functools
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from rvos.archive import (
    IncompleteArchiveError,
    build_archive_writer,
    merge_labels,
    write_archive,
)
from rvos.davis import davis_palette
from rvos.splits import Expression, Video

FRAMES = ["00000", "00001"]


def masks_of(video_id: str, stacks: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    return FRAMES, stacks


def box(rows: slice, cols: slice) -> np.ndarray:
    stack = np.zeros((len(FRAMES), 6, 8), dtype=bool)
    stack[:, rows, cols] = True
    return stack


def test_ref_youtube_vos_members_sit_in_annotations(tmp_path):
    stacks = {"0": box(slice(1, 3), slice(2, 5)), "1": box(slice(0, 0), slice(0, 0))}
    writer = build_archive_writer("ref_youtube_vos", {})
    path = tmp_path / "fused.zip"
    expected = {"abc123": {"0": FRAMES, "1": FRAMES}}
    load = functools.partial(masks_of, stacks=stacks)
    assert write_archive(path, load, expected, jobs=1, writer=writer) == 4
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == [
            "Annotations/abc123/0/00000.png",
            "Annotations/abc123/0/00001.png",
            "Annotations/abc123/1/00000.png",
            "Annotations/abc123/1/00001.png",
        ]
        image = Image.open(io.BytesIO(archive.read("Annotations/abc123/0/00001.png")))
        assert image.mode == "L" and image.size == (8, 6)
        np.testing.assert_array_equal(np.asarray(image), np.where(stacks["0"][1], 255, 0))


def davis_videos() -> dict[str, Video]:
    """One video, two annotators, two objects each (expression ids as Ref-DAVIS17 numbers them
    for two annotators)."""
    expressions = {
        str(i): Expression(str(i), f"sentence {i}", annotator=i % 2, obj_idx=i // 2)
        for i in range(4)
    }
    return {"lab-coat": Video("lab-coat", tuple(FRAMES), expressions)}


def test_ref_davis17_members_are_indexed_pngs_per_annotator(tmp_path):
    left, right = box(slice(1, 4), slice(0, 5)), box(slice(2, 5), slice(3, 8))
    stacks = {"0": left, "2": right, "1": right, "3": np.zeros_like(left)}
    writer = build_archive_writer("ref_davis17", davis_videos())
    path = tmp_path / "stage1.zip"
    expected = {"lab-coat": {e: FRAMES for e in "0123"}}
    load = functools.partial(masks_of, stacks=stacks)
    assert write_archive(path, load, expected, jobs=1, writer=writer) == 4
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == [
            "anno_0/lab-coat/00000.png",
            "anno_0/lab-coat/00001.png",
            "anno_1/lab-coat/00000.png",
            "anno_1/lab-coat/00001.png",
        ]
        image = Image.open(io.BytesIO(archive.read("anno_0/lab-coat/00001.png")))
        assert image.mode == "P" and image.size == (8, 6)
        assert image.getpalette() == davis_palette()
        labels = np.asarray(image)
        # Annotator 0: object 1 = expression 0 (left), object 2 = expression 2 (right); where
        # they overlap the first object keeps the pixel.
        want = np.zeros((6, 8), dtype=np.uint8)
        want[right[1]] = 2
        want[left[1]] = 1
        np.testing.assert_array_equal(labels, want)
        # Annotator 1: object 1 = expression 1 (right), object 2 = expression 3 (empty).
        other = np.asarray(Image.open(io.BytesIO(archive.read("anno_1/lab-coat/00000.png"))))
        np.testing.assert_array_equal(other, np.where(right[0], 1, 0))


def test_merge_labels_first_object_wins():
    a = np.array([[[True, True, False]]])
    b = np.array([[[False, True, True]]])
    np.testing.assert_array_equal(merge_labels([a, b]), [[[1, 1, 2]]])
    np.testing.assert_array_equal(merge_labels([b, a]), [[[2, 1, 1]]])


def test_incomplete_davis_archive_is_not_written(tmp_path):
    writer = build_archive_writer("ref_davis17", davis_videos())
    stacks = {"0": box(slice(0, 1), slice(0, 1))}
    path = tmp_path / "fused.zip"
    with pytest.raises(IncompleteArchiveError, match="expression '1' is missing"):
        write_archive(
            path,
            functools.partial(masks_of, stacks=stacks),
            {"lab-coat": {e: FRAMES for e in "0123"}},
            jobs=1,
            writer=writer,
        )
    assert not path.exists()


def test_writer_errors_name_the_setting():
    plain = {"v": Video("v", ("0",), {"0": Expression("0", "x")})}
    with pytest.raises(ValueError, match="data.archive=ref_davis17 needs expressions grouped"):
        build_archive_writer("ref_davis17", plain)
    with pytest.raises(ValueError, match="unknown archive writer 'zip' \\(known: mevis, "):
        build_archive_writer("zip", plain)
