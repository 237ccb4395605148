"""``run_pipeline.py ensemble``: archives of one split fused by weighted pixel voting.

Archives are written by the pipeline's own writers on random masks (a few frames of 12x16); the
command runs in this process.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from benchmark_layouts import ANNOTATORS, write_ref_davis17
from in_process import run_in_process
from mask_archives import (
    decoded,
    members,
    write_label_archive,
    write_mask_archive,
)

from rvos.ensemble import EnsembleError, integer_weights, plan_ensemble, vote

FRAMES = {"bird": ["00000", "00001", "00002"], "cat": ["00003", "00010"]}
EXPRESSIONS = {"bird": ["0", "1", "10"], "cat": ["2"]}
SIZE = (12, 16)


def random_masks(seed: int, size=SIZE, frames=FRAMES, expressions=EXPRESSIONS):
    rng = np.random.default_rng(seed)
    return {
        video: {e: rng.random((len(frames[video]), *size)) > 0.5 for e in expressions[video]}
        for video in frames
    }


def random_labels(seed: int, objects: int = 2, annotators: int = 2):
    """Per video and annotator ``0..annotators-1``, labels ``0..objects``."""
    rng = np.random.default_rng(seed)
    return {
        video: {
            str(k): rng.integers(0, objects + 1, (len(FRAMES[video]), *SIZE))
            for k in range(annotators)
        }
        for video in FRAMES
    }


def ensemble(*args) -> int:
    return run_in_process("ensemble", *args, "archive.jobs=1")


# ----------------------------------------------------------------------------- the vote


def test_vote_is_a_weighted_strict_majority_and_a_tie_is_background():
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    c = np.array([False, True, True, False])
    assert vote([a, b, c], (1, 1, 1)).tolist() == [True, True, True, False]
    assert vote([a, b], (1, 1)).tolist() == [True, False, False, False]  # 1 of 2: a tie
    assert vote([a, b, c], (2, 1, 1)).tolist() == [True, True, False, False]  # b+c: a tie
    assert vote([a, b, c], (3, 1, 1)).tolist() == [True, True, False, False]
    assert vote([a, b, c], (1, 0, 0)).tolist() == a.tolist()


def test_weights_become_exact_integers():
    assert integer_weights([1, 1, 1]) == (1, 1, 1)
    assert integer_weights([0.5, 0.25, 0.25]) == (2, 1, 1)
    assert integer_weights([0.1, 0.2, 0.3]) == (1, 2, 3)  # 0.1 + 0.2 ties with 0.3, exactly
    assert integer_weights([2.0, 0, 4]) == (1, 0, 2)
    with pytest.raises(EnsembleError, match="add up to 0"):
        integer_weights([0, 0])
    with pytest.raises(EnsembleError, match="too finely divided"):
        integer_weights([1e19, 1, 1])
    many = (200, 100, 100)  # sums beyond one byte
    masks = [np.array([True, False]), np.array([False, True]), np.array([True, True])]
    assert vote(masks, many).tolist() == [True, False]


# ----------------------------------------------------------------------------- reproduction


@pytest.mark.parametrize("layout", ["mevis", "ref_youtube_vos"])
def test_an_ensemble_of_one_archive_reproduces_it(tmp_path, capfd, layout):
    source = write_mask_archive(tmp_path / "a.zip", random_masks(0), FRAMES, layout)
    out = tmp_path / "e.zip"
    assert ensemble(source, f"out={out}") == 0
    assert members(out) == members(source)  # every member, byte for byte
    stamp = zipfile.ZipFile(out).comment.decode()
    assert str(source) in stamp
    assert "voted from 1 archives" in capfd.readouterr().err


def test_an_ensemble_of_one_davis_archive_reproduces_it(tmp_path):
    source = write_label_archive(tmp_path / "a.zip", random_labels(0, objects=3), FRAMES)
    out = tmp_path / "e.zip"
    assert ensemble(source, f"out={out}") == 0
    assert members(out) == members(source)


def test_folders_and_zips_mix(tmp_path):
    source = write_mask_archive(tmp_path / "a.zip", random_masks(17), FRAMES, "ref_youtube_vos")
    folder = tmp_path / "a"
    zipfile.ZipFile(source).extractall(folder)
    out = tmp_path / "e.zip"
    assert ensemble(folder, source, folder, f"out={out}") == 0
    assert members(out) == members(source)


def test_three_archives_two_equal_give_those_two(tmp_path):
    twin = random_masks(1)
    a = write_mask_archive(tmp_path / "a.zip", twin, FRAMES)
    b = write_mask_archive(tmp_path / "b.zip", random_masks(2), FRAMES)
    c = write_mask_archive(tmp_path / "c" / "c.zip", twin, FRAMES)
    out = tmp_path / "e.zip"
    assert ensemble(a, b, c, f"out={out}") == 0
    assert members(out) == members(a)
    assert members(out) != members(b)


def test_three_davis_archives_two_equal_give_those_two(tmp_path):
    twin = random_labels(3)
    a = write_label_archive(tmp_path / "a.zip", twin, FRAMES)
    b = write_label_archive(tmp_path / "b.zip", random_labels(4), FRAMES)
    c = write_label_archive(tmp_path / "c.zip", twin, FRAMES)
    out = tmp_path / "e.zip"
    assert ensemble(b, a, c, f"out={out}") == 0
    assert members(out) == members(a)


def test_davis_objects_are_voted_per_object(tmp_path):
    """Object 1 in two archives of three wins; a pixel labelled 1, 2 and 0 stays background."""
    labels = [random_labels(seed) for seed in (5, 6, 7)]
    paths = [
        write_label_archive(tmp_path / f"{i}.zip", lab, FRAMES) for i, lab in enumerate(labels)
    ]
    out = tmp_path / "e.zip"
    assert ensemble(*paths, f"out={out}") == 0
    result = decoded(out, labels=True)
    for video, annotators in labels[0].items():
        for k in annotators:
            stacks = [lab[video][k] for lab in labels]
            for t, frame in enumerate(FRAMES[video]):
                votes = [s[t] for s in stacks]
                want = np.zeros(SIZE, dtype=np.uint8)
                for obj_id in (1, 2):
                    want[sum((v == obj_id).astype(int) for v in votes) >= 2] = obj_id
                assert (result[f"anno_{k}/{video}/{frame}.png"] == want).all()


def test_weights_are_honoured(tmp_path):
    masks = [random_masks(seed) for seed in (8, 9, 10)]
    paths = [write_mask_archive(tmp_path / f"{i}.zip", m, FRAMES) for i, m in enumerate(masks)]
    equal, weighted = tmp_path / "equal.zip", tmp_path / "weighted.zip"
    assert ensemble(*paths, f"out={equal}") == 0
    assert ensemble(*paths, "weights=2,1,1", f"out={weighted}") == 0
    got_equal, got_weighted = decoded(equal), decoded(weighted)
    assert any((got_equal[n] != got_weighted[n]).any() for n in got_equal)  # the test has teeth
    for video, expressions in masks[0].items():
        for exp_id in expressions:
            a, b, c = (m[video][exp_id] for m in masks)
            for t, frame in enumerate(FRAMES[video]):
                name = f"{video}/{exp_id}/{frame}.png"
                assert (got_weighted[name] == (a[t] & (b[t] | c[t]))).all()  # 2a + b + c > 2
                majority = (a[t] & b[t]) | (a[t] & c[t]) | (b[t] & c[t])
                assert (got_equal[name] == majority).all()


# ----------------------------------------------------------------------------- refusals


def _refused(capfd, *args, out: Path) -> str:
    """Run the command, expecting it refused before writing: one line, nothing written."""
    capfd.readouterr()  # what writing the test's archives printed
    assert ensemble(*args, f"out={out}") == 1
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert len(lines) == 1, err
    assert not out.parent.exists(), "nothing is written before the checks pass"
    return lines[0]


def _mismatch(tmp_path, change):
    """Archive a, and archive b made from the same masks after ``change(masks, frames)``."""
    masks, frames = random_masks(11), {v: list(f) for v, f in FRAMES.items()}
    a = write_mask_archive(tmp_path / "a.zip", masks, frames)
    masks_b, frames_b = random_masks(11), {v: list(f) for v, f in FRAMES.items()}
    change(masks_b, frames_b)
    b = write_mask_archive(tmp_path / "b.zip", masks_b, frames_b)
    return a, b


def test_a_missing_video_is_refused_naming_it(tmp_path, capfd):
    a, b = _mismatch(tmp_path, lambda masks, frames: masks.pop("cat"))
    line = _refused(capfd, a, a, b, out=tmp_path / "out" / "e.zip")
    assert f"{b}: video 'cat' is missing ({a} has it)" in line


def test_an_extra_expression_is_refused_naming_it(tmp_path, capfd):
    def extra(masks, frames):
        masks["bird"]["7"] = masks["bird"]["0"]

    a, b = _mismatch(tmp_path, extra)
    line = _refused(capfd, a, b, out=tmp_path / "out" / "e.zip")
    assert f"{b}: video 'bird', expression '7' is not in {a}" in line


def test_a_missing_frame_is_refused_naming_it(tmp_path, capfd):
    def shorter(masks, frames):
        frames["cat"] = frames["cat"][:1]
        masks["cat"] = {e: m[:1] for e, m in masks["cat"].items()}

    a, b = _mismatch(tmp_path, shorter)
    line = _refused(capfd, a, b, out=tmp_path / "out" / "e.zip")
    assert f"{b}: video 'cat', expression '2', frame '00010' is missing ({a} has it)" in line


def test_another_frame_size_is_refused_naming_it(tmp_path, capfd):
    a = write_mask_archive(tmp_path / "a.zip", random_masks(12), FRAMES)
    b = write_mask_archive(tmp_path / "b.zip", random_masks(12, size=(12, 17)), FRAMES)
    line = _refused(capfd, a, b, out=tmp_path / "out" / "e.zip")
    assert f"{b}: video 'bird', expression '0', frame '00000' is 17x12, in {a} 16x12" in line


def test_archives_are_read_within_the_evaluation_limits_given(tmp_path, capfd):
    a = write_mask_archive(tmp_path / "a.zip", random_masks(12), FRAMES)  # 16x12 frames
    line = _refused(capfd, a, a, "evaluation.limits.max_pixels=100", out=tmp_path / "out" / "e.zip")
    assert "evaluation.limits.max_pixels=100" in line and "16x12" in line


def test_another_layout_is_refused_naming_both(tmp_path, capfd):
    a = write_mask_archive(tmp_path / "a.zip", random_masks(13), FRAMES)
    b = write_mask_archive(tmp_path / "b.zip", random_masks(13), FRAMES, "ref_youtube_vos")
    c = write_label_archive(tmp_path / "c.zip", random_labels(13), FRAMES)
    line = _refused(capfd, a, b, out=tmp_path / "out" / "e.zip")
    assert f"{b} is in the ref_youtube_vos layout" in line and f"{a} in the mevis layout" in line
    line = _refused(capfd, c, a, out=tmp_path / "out" / "e.zip")
    assert f"{a} is in the mevis layout" in line and f"{c} in the ref_davis17 layout" in line


def test_a_split_is_the_reference_when_named(tmp_path, capfd, make_split):
    videos = {
        v: {"frames": FRAMES[v], "expressions": dict.fromkeys(EXPRESSIONS[v], "a bird")}
        for v in FRAMES
    }
    videos["bird"]["expressions"]["3"] = "the fourth"
    root = make_split(tmp_path / "split", videos, size=SIZE)
    a = write_mask_archive(tmp_path / "a.zip", random_masks(14), FRAMES)
    line = _refused(capfd, a, a, f"data.root={root}", out=tmp_path / "out" / "e.zip")
    assert f"{a}: video 'bird', expression '3' is missing (the split {root} has it)" in line
    videos["bird"]["expressions"].pop("3")
    make_split(tmp_path / "split", videos, size=SIZE)
    out = tmp_path / "e.zip"
    assert ensemble(a, a, f"data.root={root}", f"out={out}") == 0
    assert list(members(out)) == list(members(a))  # in the split's order


def test_davis_archives_are_checked_against_a_davis_split(tmp_path, capfd):
    objects = [[f"object {i}, annotator {k}" for k in range(ANNOTATORS)] for i in (1, 2)]
    videos = {
        v: {"frames": FRAMES[v], "objects": objects, "labels": np.zeros((len(FRAMES[v]), *SIZE))}
        for v in FRAMES
    }
    root = write_ref_davis17(tmp_path / "davis", videos, size=SIZE)
    split = ("data=ref_davis17_valid", f"data.root={root}")
    a, b = (
        write_label_archive(tmp_path / f"{name}.zip", random_labels(seed, 2, ANNOTATORS), FRAMES)
        for name, seed in (("a", 20), ("b", 21))
    )
    out = tmp_path / "e.zip"
    assert ensemble(a, b, a, *split, f"out={out}") == 0
    assert members(out) == members(a)
    three = write_label_archive(tmp_path / "c.zip", random_labels(22, 3, ANNOTATORS), FRAMES)
    line = _refused(capfd, a, three, *split, out=tmp_path / "out" / "e.zip")
    assert f"{three}: video 'bird', annotator 'anno_0' has object 3; the split {root} has 2" in line
    two = write_label_archive(tmp_path / "d.zip", random_labels(23, 2, 2), FRAMES)
    line = _refused(capfd, a, two, *split, out=tmp_path / "out" / "e.zip")
    assert f"{two}: video 'bird', annotator 'anno_2' is missing (the split {root} has it)" in line


def test_bad_arguments_exit_2_in_one_line(tmp_path, capfd):
    a = write_mask_archive(tmp_path / "a.zip", random_masks(15), FRAMES)
    for args, message in [
        ((a, a, "weights=[1,2,3]", f"out={tmp_path / 'e.zip'}"), "3 weight(s) for 2 archive(s)"),
        ((a, "weights=[1,-1]", f"out={tmp_path / 'e.zip'}"), "ensemble.weights=[1.0, -1.0]"),
        ((a, a), "out=E.zip: name the archive to write"),
        ((a, f"out={a}"), "is one of the archives to fuse"),
    ]:
        capfd.readouterr()
        code = ensemble(*args)
        err = capfd.readouterr().err.strip()
        errors = [line for line in err.splitlines() if " ERROR " in line]
        assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "e.zip").exists()


def test_plan_checks_without_writing(tmp_path):
    a = write_mask_archive(tmp_path / "a.zip", random_masks(16), FRAMES)
    plan = plan_ensemble([a, a], [1, 1])
    assert plan.weights == (1, 1) and plan.sizes == {"bird": SIZE, "cat": SIZE}
    assert list(plan.inventory.videos["bird"]) == ["0", "1", "10"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]
