"""Benchmark split layouts read into the same videos and expressions, with the same id checks."""

import json

import numpy as np
import pytest
from benchmark_layouts import write_ref_davis17, write_ref_youtube_vos

from rvos.mevis import MevisSplit
from rvos.splits import SPLIT_LAYOUTS, DataError, Split

SIZE = (8, 10)
YTVOS_VALID = {
    "b7c8d9": {"frames": ["00000", "00005", "00010"], "expressions": {"0": "a dog", "1": "a cat"}},
    "a1b2c3": {"frames": ["00000", "00005"], "expressions": {"0": "the man"}},
}
YTVOS_TEST = {"ffff01": {"frames": ["00000"], "expressions": {"0": "a bird"}}}


def davis_videos(num_objects=2):
    frames = ["00000", "00001"]
    labels = np.zeros((2, *SIZE), dtype=np.uint8)
    for obj_idx in range(num_objects):
        labels[:, obj_idx, obj_idx] = obj_idx + 1
    return {
        "blackswan": {
            "frames": frames,
            "objects": [
                [f"object {i}, annotator {k}" for k in range(4)] for i in range(num_objects)
            ],
            "labels": labels,
        }
    }


def test_ref_youtube_vos_leaves_the_test_videos_out(tmp_path):
    root = write_ref_youtube_vos(tmp_path, YTVOS_VALID, YTVOS_TEST, size=SIZE)
    split = Split(root, "ref_youtube_vos")
    assert split.video_ids == ["a1b2c3", "b7c8d9"]
    assert split.videos["b7c8d9"].expressions["1"].text == "a cat"
    assert split.videos["b7c8d9"].expressions["1"].anno_ids == ()
    assert split.frame_paths("a1b2c3")[1] == root / "valid/JPEGImages/a1b2c3/00005.jpg"
    split.validate()
    assert not split.has_ground_truth


def test_ref_youtube_vos_needs_the_test_list(tmp_path):
    root = write_ref_youtube_vos(tmp_path, YTVOS_VALID, YTVOS_TEST, size=SIZE)
    (root / "meta_expressions/test/meta_expressions.json").unlink()
    with pytest.raises(DataError, match="meta_expressions/test/meta_expressions.json not found"):
        Split(root, "ref_youtube_vos")


def test_ref_davis17_groups_expressions_by_annotator(tmp_path):
    root = write_ref_davis17(tmp_path, davis_videos(), size=SIZE)
    split = Split(root, "ref_davis17")
    video = split.videos["blackswan"]
    expression = video.expressions["5"]  # object 1, annotator 1
    assert (expression.annotator, expression.obj_idx) == (1, 1)
    assert expression.text == "object 1, annotator 1"
    assert video.annotator_groups() == {0: ["0", "4"], 1: ["1", "5"], 2: ["2", "6"], 3: ["3", "7"]}
    assert split.has_ground_truth
    assert split.annotation_paths("blackswan")[1] == root / "valid/Annotations/blackswan/00001.png"
    split.validate()


def test_ref_davis17_refuses_incomplete_groups(tmp_path):
    root = write_ref_davis17(tmp_path, davis_videos(), size=SIZE)
    meta_path = root / "meta_expressions/valid/meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    del meta["videos"]["blackswan"]["expressions"]["7"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'blackswan': 7 expressions, not a multiple of 4"):
        Split(root, "ref_davis17")


@pytest.mark.parametrize("layout", ["ref_youtube_vos", "ref_davis17"])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("video", "../escape", "video id '../escape' is not a safe file name"),
        ("exp_id", "a/b", "expression id 'a/b'"),
        ("frame", "../../x", "frame name '../../x'"),
        ("text", " ", "the expression text is empty"),
    ],
)
def test_every_layout_refuses_unsafe_ids(tmp_path, layout, field, value, message):
    if layout == "ref_youtube_vos":
        root = write_ref_youtube_vos(tmp_path, YTVOS_VALID, YTVOS_TEST, size=SIZE)
        video_id = "a1b2c3"
    else:
        root = write_ref_davis17(tmp_path, davis_videos(), size=SIZE)
        video_id = "blackswan"
    meta_path = root / SPLIT_LAYOUTS.lookup(layout).meta_file
    meta = json.loads(meta_path.read_text())
    entry = meta["videos"][video_id]
    if field == "video":
        meta["videos"][value] = meta["videos"].pop(video_id)
    elif field == "exp_id":
        entry["expressions"][value] = entry["expressions"].pop("0")
    elif field == "frame":
        entry["frames"][0] = value
    else:
        entry["expressions"]["0"]["exp"] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        Split(root, layout)


def test_mevis_anno_ids_must_be_a_list(tmp_path, make_split):
    root = make_split(tmp_path, {"v": {"frames": ["00000"], "expressions": {"0": "x"}}})
    meta = json.loads((root / "meta_expressions.json").read_text())
    meta["videos"]["v"]["expressions"]["0"]["anno_id"] = 7
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="expression '0': 'anno_id' must be a list"):
        MevisSplit(root)


def test_a_missing_metadata_file_names_the_layout(tmp_path):
    with pytest.raises(DataError, match="is data.root the Ref-YouTube-VOS folder"):
        Split(tmp_path, "ref_youtube_vos")
    with pytest.raises(ValueError, match="unknown split layout 'davis' \\(known: mevis, "):
        Split(tmp_path, "davis")
