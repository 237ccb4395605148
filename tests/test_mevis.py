"""MeViS split reading and up-front validation."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rvos.mevis import DataError, MevisSplit, load_gt_masks

VIDEOS = {
    "b": {"frames": ["00000", "00001"], "expressions": {"0": "the cat", "1": "a  dog\n"}},
    "a": {"frames": ["00003"], "expressions": {"2": "bird"}},
}


def test_reads_videos_sorted(tmp_path, make_split):
    split = MevisSplit(make_split(tmp_path, VIDEOS))
    assert split.video_ids == ["a", "b"]
    assert split.videos["b"].expressions["1"].text == "a  dog\n"  # as written
    assert [p.name for p in split.frame_paths("b")] == ["00000.jpg", "00001.jpg"]
    assert split.check_frames("b") == (12, 16)
    assert len(split.load_frames("b")) == 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("video", "../escape", "video id '../escape' is not a safe file name"),
        ("exp_id", "a/b", "expression id 'a/b'"),
        ("exp_id", "..", "expression id '..'"),
        ("text", "   ", "expression '0': the expression text is empty"),
        ("frame", "../../x", "frame name '../../x'"),
    ],
)
def test_unsafe_or_empty_ids_are_refused(tmp_path, field, value, message, make_split):
    videos = {"v": {"frames": ["00000"], "expressions": {"0": "x"}}}
    make_split(tmp_path, videos)
    meta = json.loads((tmp_path / "meta_expressions.json").read_text())
    entry = meta["videos"]["v"]
    if field == "video":
        meta["videos"] = {value: entry}
    elif field == "exp_id":
        entry["expressions"] = {value: entry["expressions"]["0"]}
    elif field == "text":
        entry["expressions"]["0"]["exp"] = value
    else:
        entry["frames"] = [value]
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MevisSplit(tmp_path)


def test_missing_and_corrupt_frames_name_the_video(tmp_path, make_split):
    split = MevisSplit(make_split(tmp_path, VIDEOS))
    (tmp_path / "JPEGImages/b/00001.jpg").unlink()
    with pytest.raises(DataError, match=r"video 'b': 1 frame\(s\) .* missing .*00001.jpg"):
        split.validate()
    (tmp_path / "JPEGImages/b/00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="video 'b': frame 00001.jpg is unreadable"):
        split.validate()


def test_missing_meta_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="meta_expressions.json not found"):
        MevisSplit(tmp_path)


def test_ground_truth_is_the_union_of_annotations():
    first = np.zeros((4, 5), dtype=np.uint8)
    first[0, :2] = 1
    second = np.zeros((4, 5), dtype=np.uint8)
    second[3, 4] = 1

    def rle(mask):
        encoded = mask_utils.encode(np.asfortranarray(mask))
        return {"size": encoded["size"], "counts": encoded["counts"].decode()}

    mask_dict = {"1": [rle(first), None], "2": [rle(second), rle(second)]}
    gt = load_gt_masks(mask_dict, ["1", "2"], 2, 4, 5)
    np.testing.assert_array_equal(gt[0], (first | second).astype(bool))
    np.testing.assert_array_equal(gt[1], second.astype(bool))


def test_a_split_without_videos_says_so_naming_the_file(tmp_path):
    meta = tmp_path / "meta_expressions.json"
    meta.write_text(json.dumps({"videos": {}}))
    with pytest.raises(DataError) as caught:
        MevisSplit(tmp_path)
    assert str(caught.value) == f"{meta}: the split has no videos (its 'videos' object is empty)"
    meta.write_text(json.dumps({"video": {}}))
    with pytest.raises(DataError, match=r"meta_expressions.json: no 'videos' object"):
        MevisSplit(tmp_path)


def test_a_missing_frame_folder_is_named_once(tmp_path, make_split):
    import shutil

    from rvos.frames import check_frames

    frames = [f"{t:05d}" for t in range(40)]
    root = make_split(tmp_path, {"v": {"frames": frames, "expressions": {"0": "x"}}, **VIDEOS})
    shutil.rmtree(root / "JPEGImages" / "v")
    split = MevisSplit(root)
    folder = root / "JPEGImages" / "v"
    expected = f"video 'v': frame folder {folder} not found (40 frame(s) listed"
    for read in (split.validate, lambda: split.load_frames("v")):
        with pytest.raises(DataError) as caught:
            read()
        assert str(caught.value).startswith(expected) and "00000" not in str(caught.value)
    videos = {video_id: split.frame_paths(video_id) for video_id in split.video_ids}
    (problem,) = check_frames(videos, progress=False)
    assert problem == f"video 'v': frame folder {folder} not found (40 frame(s) listed)"
