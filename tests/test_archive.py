"""MeViS archive layout and completeness."""

import functools
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from rvos.archive import IncompleteArchiveError, write_archive


def fake_masks(frame_counts, video_id):
    frames = [f"{i:05d}" for i in range(frame_counts[video_id])]
    masks = {}
    for exp_id in ("0", "1"):
        stack = np.zeros((len(frames), 6, 9), dtype=bool)
        stack[:, 1:3, 2:5] = exp_id == "1"
        masks[exp_id] = stack
    return frames, masks


def test_layout_values_and_sizes(tmp_path):
    counts = {"vidA": 2, "vidB": 3}
    expected = {
        v: {e: [f"{i:05d}" for i in range(n)] for e in ("0", "1")} for v, n in counts.items()
    }
    path = tmp_path / "sub" / "fused.zip"
    written = write_archive(path, functools.partial(fake_masks, counts), expected, jobs=1)
    assert written == 10
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        assert names[0] == "vidA/0/00000.png" and len(names) == 10
        assert all(n.count("/") == 2 and not n.startswith("/") for n in names)
        image = Image.open(io.BytesIO(archive.read("vidB/1/00002.png")))
        assert image.mode == "L" and image.size == (9, 6)
        pixels = np.asarray(image)
        assert set(np.unique(pixels)) == {0, 255}
        assert pixels[1:3, 2:5].min() == 255 and pixels.sum() == 255 * 6
        empty = np.asarray(Image.open(io.BytesIO(archive.read("vidA/0/00001.png"))))
        assert empty.max() == 0


def test_missing_expression_leaves_no_archive(tmp_path):
    counts = {"vidA": 2}
    expected = {"vidA": {"0": ["00000", "00001"], "9": ["00000", "00001"]}}
    path = tmp_path / "fused.zip"
    with pytest.raises(IncompleteArchiveError, match="expression '9' is missing"):
        write_archive(path, functools.partial(fake_masks, counts), expected, jobs=1)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_frame_count_mismatch_is_refused(tmp_path):
    counts = {"vidA": 2}
    expected = {"vidA": {"0": ["00000", "00001", "00002"]}}
    with pytest.raises(IncompleteArchiveError, match="2 masks for 3 listed frames"):
        write_archive(tmp_path / "x.zip", functools.partial(fake_masks, counts), expected, jobs=1)


def test_the_same_masks_give_the_same_bytes_whenever_written(tmp_path, monkeypatch):
    """Archives of two runs (hours apart, on other machines) compare byte for byte."""
    counts = {"vidA": 2}
    expected = {"vidA": {e: ["00000", "00001"] for e in ("0", "1")}}
    load = functools.partial(fake_masks, counts)
    first, second = tmp_path / "first.zip", tmp_path / "second.zip"
    monkeypatch.setattr(zipfile.time, "time", lambda: 1_700_000_000.0)
    write_archive(first, load, expected, jobs=1)
    monkeypatch.setattr(zipfile.time, "time", lambda: 1_800_000_000.0)
    write_archive(second, load, expected, jobs=1)
    assert first.read_bytes() == second.read_bytes()
