"""Per-video intermediate records: round trip, versioning, corruption, atomic writes."""

import numpy as np
import pytest

from rvos import intermediates as im
from rvos.io import atomic_output
from rvos.masks import RunLengthMasks


def test_stage1_roundtrip(tmp_path, make_stage1):
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


def test_stage2_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    video = im.Stage2Video("vid", ["00000", "00001", "00002"], 5, 7)
    sam2 = rng.random((3, 2, 5, 7)) > 0.5
    video.expressions["a"] = im.ExpressionRefinement(
        kept_columns=np.array([1, 3]),
        prompt_frames=np.array([2, 0]),
        sam2_masks=RunLengthMasks.encode(sam2),
        stage1_union=RunLengthMasks.encode(rng.random((3, 5, 7)) > 0.5),
    )
    video.expressions["b"] = im.ExpressionRefinement(  # no query kept
        kept_columns=np.zeros(0, dtype=np.int64),
        prompt_frames=np.zeros(0, dtype=np.int64),
        sam2_masks=RunLengthMasks.encode(np.zeros((3, 0, 5, 7), dtype=bool)),
        stage1_union=RunLengthMasks.encode(np.zeros((3, 5, 7), dtype=bool)),
    )
    path = im.stage_path(tmp_path, 2, "vid")
    im.save_stage2(path, video, fingerprint="fp2")
    back = im.load_stage2(path)
    assert (back.video_id, back.frame_names, back.height, back.width) == (
        "vid",
        video.frame_names,
        5,
        7,
    )
    assert list(back.expressions) == ["a", "b"]
    for exp_id, exp in video.expressions.items():
        got = back.expressions[exp_id]
        np.testing.assert_array_equal(got.kept_columns, exp.kept_columns)
        np.testing.assert_array_equal(got.prompt_frames, exp.prompt_frames)
        np.testing.assert_array_equal(got.sam2_masks.decode(), exp.sam2_masks.decode())
        np.testing.assert_array_equal(got.stage1_union.decode(), exp.stage1_union.decode())
    np.testing.assert_array_equal(back.expressions["a"].sam2_union(), sam2.any(axis=1))
    assert back.expressions["b"].sam2_union().shape == (3, 5, 7)
    assert im.is_finished(path, im.STAGE2_KIND, "fp2")


def test_stage3_roundtrip_keeps_decisions_in_the_header(tmp_path):
    rng = np.random.default_rng(2)
    video = im.Stage3Video("vid", ["00000", "00001"], 4, 6)
    for exp_id, multi in (("0", True), ("1", False)):
        video.expressions[exp_id] = im.ExpressionFusion(
            masks=RunLengthMasks.encode(rng.random((2, 4, 6)) > 0.5),
            multi_object=multi,
            frames_sam2_smaller=2 if multi else 0,
            frames_both_nonempty=2,
        )
    path = im.stage_path(tmp_path, 3, "vid")
    im.save_stage3(path, video, fingerprint="fp3")
    back = im.load_stage3(path)
    for exp_id, exp in video.expressions.items():
        got = back.expressions[exp_id]
        np.testing.assert_array_equal(got.masks.decode(), exp.masks.decode())
        assert (got.multi_object, got.frames_sam2_smaller, got.frames_both_nonempty) == (
            exp.multi_object,
            exp.frames_sam2_smaller,
            exp.frames_both_nonempty,
        )
    decisions = im.read_header(path)["decisions"]
    assert decisions["0"] == {
        "multi_object": True,
        "frames_sam2_smaller": 2,
        "frames_both_nonempty": 2,
    }


def test_files_are_not_pickles(tmp_path, make_stage1):
    path = im.stage_path(tmp_path, 1, "vid")
    im.save_stage1(path, make_stage1(), fingerprint="abc")
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)


def test_corrupt_and_foreign_files_are_reported(tmp_path, make_stage1):
    path = im.stage_path(tmp_path, 1, "vid")
    im.save_stage1(path, make_stage1(), fingerprint="abc")
    with pytest.raises(im.IntermediateError, match="stage2"):
        im.load_stage2(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(im.IntermediateError, match="corrupt"):
        im.load_stage1(path)
    assert not im.is_finished(path, im.STAGE1_KIND, "abc")


def test_other_versions_are_not_trusted(tmp_path, monkeypatch, make_stage1):
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
