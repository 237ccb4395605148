"""Per-video intermediate records: round trip, versioning, corruption, atomic writes."""

import numpy as np
import pytest

from rvos import intermediates as im
from rvos.io import atomic_output
from rvos.masks import RunLengthMasks


def make_stage1():
    rng = np.random.default_rng(0)
    video = im.Stage1Video("vid", ["00000", "00001"], 6, 8)
    for exp_id in ("0", "7"):
        masks = rng.random((2, 3, 6, 8)) > 0.5
        video.expressions[exp_id] = im.ExpressionProposals(
            scores=rng.random((2, 3), dtype=np.float32),
            boxes=rng.random((2, 3, 4), dtype=np.float32),
            masks=RunLengthMasks.encode(masks),
            query_ids=np.array([4, 0, 2]),
            answer=RunLengthMasks.encode(masks.any(axis=1)),
        )
    return video


def test_stage1_roundtrip(tmp_path):
    video = make_stage1()
    path = im.stage_path(tmp_path, 1, "vid")
    im.save_stage1(path, video, fingerprint="abc")
    back = im.load_stage1(path)
    assert back.frame_names == video.frame_names and list(back.expressions) == ["0", "7"]
    for exp_id, exp in video.expressions.items():
        got = back.expressions[exp_id]
        np.testing.assert_array_equal(got.scores, exp.scores)
        np.testing.assert_array_equal(got.masks.decode(), exp.masks.decode())
        np.testing.assert_array_equal(got.answer.decode(), exp.answer.decode())
    assert im.is_finished(path, im.STAGE1_KIND, "abc")
    assert not im.is_finished(path, im.STAGE1_KIND, "other-config")
    assert not im.is_finished(path, im.STAGE2_KIND, "abc")


def test_files_are_not_pickles(tmp_path):
    path = im.stage_path(tmp_path, 1, "vid")
    im.save_stage1(path, make_stage1(), fingerprint="abc")
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)


def test_corrupt_and_foreign_files_are_reported(tmp_path):
    path = im.stage_path(tmp_path, 1, "vid")
    im.save_stage1(path, make_stage1(), fingerprint="abc")
    with pytest.raises(im.IntermediateError, match="stage2"):
        im.load_stage2(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(im.IntermediateError, match="corrupt"):
        im.load_stage1(path)
    assert not im.is_finished(path, im.STAGE1_KIND, "abc")


def test_other_versions_are_not_trusted(tmp_path, monkeypatch):
    path = im.stage_path(tmp_path, 1, "vid")
    im.save_stage1(path, make_stage1(), fingerprint="abc")
    monkeypatch.setattr(im, "FORMAT_VERSION", im.FORMAT_VERSION + 1)
    assert not im.is_finished(path, im.STAGE1_KIND, "abc")
    with pytest.raises(im.IntermediateError, match="version"):
        im.load_stage1(path)


def test_a_crash_mid_write_leaves_no_file_under_the_final_name(tmp_path):
    path = tmp_path / "stage1" / "vid.npz"
    with pytest.raises(KeyboardInterrupt), atomic_output(path) as tmp:
        tmp.write_bytes(b"half of a file")
        raise KeyboardInterrupt
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_fingerprint_is_order_independent():
    assert im.config_fingerprint({"a": 1, "b": [2]}) == im.config_fingerprint({"b": [2], "a": 1})
    assert im.config_fingerprint({"a": 1}) != im.config_fingerprint({"a": 2})
