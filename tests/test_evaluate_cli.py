"""The evaluator's command lines (``python -m stage3_fusion.evaluate``, ``run_pipeline.py evaluate``)
on a tiny MeViS split built in a temporary folder."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from text_tables import assert_percent, read_table

from rvos.evaluation import evaluate
from rvos.mevis import MevisSplit
from rvos.mevis_metric import evaluate_archive

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# video_id -> (frame size (H, W), frame names)
VIDEOS = {
    "vid_a": ((6, 8), ["00000", "00001", "00002"]),
    "vid_b": ((5, 5), ["00000", "00001"]),
}
# (video_id, exp_id) -> anno_ids; the ground truth is the union of the anno masks.
EXPRESSIONS = {
    ("vid_a", "0"): [0],
    ("vid_a", "1"): [0, 1],
    ("vid_a", "2"): [2],
    ("vid_b", "0"): [3],
}


def _anno_masks() -> dict[int, list[np.ndarray | None]]:
    """Per anno_id, per frame: a mask or None (object absent)."""
    masks: dict[int, list[np.ndarray | None]] = {}
    size_a, size_b = VIDEOS["vid_a"][0], VIDEOS["vid_b"][0]
    masks[0] = [_box(size_a, t, t + 2, 1, 3) for t in range(3)]  # moves down
    masks[1] = [_box(size_a, 3, 5, 4, 7) for _ in range(3)]
    masks[2] = [_box(size_a, 0, 2, 5, 8), None, _box(size_a, 4, 6, 0, 8)]
    masks[3] = [_box(size_b, 1, 4, 1, 4), _box(size_b, 2, 5, 2, 5)]
    return masks


def _box(size: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _encode(mask: np.ndarray | None) -> dict | None:
    if mask is None:
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _gt(video_id: str, exp_id: str, frame_idx: int) -> np.ndarray:
    masks = _anno_masks()
    union = np.zeros(VIDEOS[video_id][0], dtype=bool)
    for anno_id in EXPRESSIONS[(video_id, exp_id)]:
        mask = masks[anno_id][frame_idx]
        if mask is not None:
            union |= mask
    return union


def _png(mask: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = BytesIO()
    Image.fromarray(np.zeros((6, 8), np.uint8), mode="L").save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture()
def split(tmp_path: Path) -> Path:
    root = tmp_path / "valid_u"
    root.mkdir()
    videos: dict[str, dict] = {}
    for video_id, (_, frames) in VIDEOS.items():
        videos[video_id] = {"frames": frames, "expressions": {}}
    for (video_id, exp_id), anno_ids in EXPRESSIONS.items():
        videos[video_id]["expressions"][exp_id] = {
            "exp": f"object {exp_id}",
            "obj_id": anno_ids,
            "anno_id": anno_ids,
        }
    (root / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    mask_dict = {str(a): [_encode(m) for m in ms] for a, ms in _anno_masks().items()}
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root


def _perfect_files() -> dict[str, bytes]:
    files = {}
    for video_id, exp_id in EXPRESSIONS:
        for frame_idx, name in enumerate(VIDEOS[video_id][1]):
            files[f"{video_id}/{exp_id}/{name}.png"] = _png(_gt(video_id, exp_id, frame_idx))
    return files


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _command(command: list[str], *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *command, *map(str, args)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    """``python -m stage3_fusion.evaluate``: the alias."""
    return _command(["-m", "stage3_fusion.evaluate"], *args)


def _evaluate(*args: str | Path) -> subprocess.CompletedProcess:
    """``run_pipeline.py evaluate``: the application's command."""
    return _command(["run_pipeline.py", "evaluate"], *args)


def _table(stdout: str) -> dict[str, str]:
    """The one row of J, F and J&F the command printed (columns aligned under their names)."""
    [row] = read_table(stdout)
    return row


def test_perfect_zip_scores_100(split: Path, tmp_path: Path) -> None:
    archive = tmp_path / "fused.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in _perfect_files().items():
            zf.writestr(name, data)
    out_json = tmp_path / "scores.json"
    proc = _run(archive, "--data-root", split, "--json", out_json, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    assert _table(proc.stdout) == {"J": "100.00", "F": "100.00", "J&F": "100.00"}
    scores = json.loads(out_json.read_text())
    assert (scores["J"], scores["F"], scores["J&F"]) == (1.0, 1.0, 1.0)
    assert scores["num_expressions"] == 4
    assert scores["per_expression"]["vid_b"]["0"]["status"] == "ok"


def test_missing_video_expression_and_frame(split: Path, tmp_path: Path) -> None:
    files = _perfect_files()
    # vid_b is absent (its expression scores 0), so is vid_a/1 (scores 0); frame 00001 of
    # vid_a/2 is absent and its ground truth is null, so as an empty mask it is still right.
    files = {
        name: data
        for name, data in files.items()
        if not name.startswith(("vid_b/", "vid_a/1/")) and name != "vid_a/2/00001.png"
    }
    pred = _write_folder(tmp_path / "pred", files)
    out_json = tmp_path / "scores.json"
    proc = _run(pred, "--data-root", split, "--json", out_json, "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    # Expressions: vid_a/0 = 1, vid_a/1 = 0, vid_a/2 = 1, vid_b/0 = 0 -> mean 0.5.
    assert _table(proc.stdout) == {"J": "50.00", "F": "50.00", "J&F": "50.00"}
    assert "vid_a/2/00001.png" in proc.stderr
    scores = json.loads(out_json.read_text())
    per_exp = scores["per_expression"]
    assert per_exp["vid_b"]["0"] == {
        "J": 0.0,
        "F": 0.0,
        "J&F": 0.0,
        "status": "missing_video",
        "missing_frames": [],
    }
    assert per_exp["vid_a"]["1"]["status"] == "missing_expression"
    assert per_exp["vid_a"]["2"]["missing_frames"] == ["00001"]
    assert (per_exp["vid_a"]["2"]["J"], per_exp["vid_a"]["2"]["F"]) == (1.0, 1.0)
    assert scores["num_missing_videos"] == 1
    assert scores["num_missing_expressions"] == 1


def test_missed_object_on_one_frame(split: Path, tmp_path: Path) -> None:
    files = _perfect_files()
    # vid_b/0 predicted empty on its last frame: J and F are 0 there, 1 on the other frame.
    files["vid_b/0/00001.png"] = _png(np.zeros(VIDEOS["vid_b"][0], dtype=bool))
    pred = _write_folder(tmp_path / "pred", files)
    result = evaluate_archive(pred, split, jobs=1, progress=False)
    assert result.per_expression[("vid_b", "0")].j == 0.5
    assert result.per_expression[("vid_b", "0")].f == 0.5
    # Mean over 4 expressions: (1 + 1 + 1 + 0.5) / 4.
    assert result.j == result.f == result.jf == 0.875


def test_a_metric_is_looked_up_by_name(split: Path, tmp_path: Path) -> None:
    pred = _write_folder(tmp_path / "pred", _perfect_files())
    result = evaluate("mevis_v2", pred, MevisSplit(split), jobs=1, progress=False)
    assert result.summary() == {"J": 1.0, "F": 1.0, "J&F": 1.0, "T-acc": 1.0, "J&F-T": 1.0}
    with pytest.raises(ValueError, match=r"^unknown metric 'mevis3' \(known: davis17, mevis, "):
        evaluate("mevis3", pred, MevisSplit(split), jobs=1, progress=False)


def test_scores_that_cannot_be_written_are_one_line(split: Path, tmp_path: Path) -> None:
    pred = _write_folder(tmp_path / "pred", _perfect_files())
    (tmp_path / "a_file").write_text("")
    proc = _run(pred, "--data-root", split, "--json", tmp_path / "a_file" / "scores.json")
    assert proc.returncode == 1
    assert "a_file/scores.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("**/*.tmp"))


def test_missing_mask_dict_is_a_clear_error(split: Path, tmp_path: Path) -> None:
    (split / "mask_dict.json").unlink()
    pred = _write_folder(tmp_path / "pred", _perfect_files())
    proc = _run(pred, "--data-root", split)
    assert proc.returncode != 0
    assert "mask_dict.json not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_frame_size_is_a_clear_error(split: Path, tmp_path: Path) -> None:
    files = _perfect_files()
    files["vid_a/0/00002.png"] = _png(np.zeros((3, 3), dtype=bool))
    pred = _write_folder(tmp_path / "pred", files)
    with pytest.raises(ValueError, match="vid_a/0, frame 2: prediction is 3x3"):
        evaluate_archive(pred, split, jobs=1, progress=False)


def test_wrapper_folder_is_stepped_into_with_a_warning(split: Path, tmp_path: Path) -> None:
    archive = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in _perfect_files().items():
            zf.writestr(f"Annotations/{name}", data)
    proc = _run(archive, "--data-root", split)
    assert proc.returncode == 0, proc.stderr
    assert "wrapper folder 'Annotations'" in proc.stderr
    assert _table(proc.stdout) == {"J": "100.00", "F": "100.00", "J&F": "100.00"}
    folder = _write_folder(tmp_path / "wrapped_dir" / "Annotations", _perfect_files()).parent
    proc = _run(folder, "--data-root", split)
    assert proc.returncode == 0 and _table(proc.stdout)["J&F"] == "100.00"


def test_predictions_of_another_split_exit_non_zero(split: Path, tmp_path: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("some_other_video/0/00000.png", _png(np.zeros((6, 8), bool)))
    proc = _run(archive, "--data-root", split)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "no video of the split" in errors[0]


@pytest.mark.parametrize(
    "split_given_by",
    ["--data-root", "data.root"],
)
def test_application_command_scores_as_the_standalone_one(
    split: Path, tmp_path: Path, split_given_by: str
) -> None:
    files = _perfect_files()
    files["vid_b/0/00001.png"] = _png(np.zeros(VIDEOS["vid_b"][0], dtype=bool))  # J = F = 1/2
    pred = _write_folder(tmp_path / "pred", files)
    standalone = _run(pred, "--data-root", split, "--jobs", "1", "--json", tmp_path / "a.json")
    where = ["--data-root", split] if split_given_by == "--data-root" else [f"data.root={split}"]
    app = _evaluate(pred, *where, "evaluation.jobs=1", "--json", tmp_path / "b.json")
    assert standalone.returncode == app.returncode == 0, app.stderr
    # Mean over 4 expressions: (1 + 1 + 1 + 0.5) / 4.
    assert (
        _table(app.stdout)
        == _table(standalone.stdout)
        == {
            "J": "87.50",
            "F": "87.50",
            "J&F": "87.50",
        }
    )
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_application_command_takes_the_metric_of_the_benchmark(split: Path, tmp_path: Path) -> None:
    """``data=mevis_v2_valid_u`` scores with MeViS v2's metric (its accuracies), ``--metric``
    overrides it; a benchmark without a local metric is refused in one line."""
    pred = _write_folder(tmp_path / "pred", _perfect_files())
    v2 = _evaluate(pred, "data=mevis_v2_valid_u", f"data.root={split}", "--jobs", "1")
    assert v2.returncode == 0, v2.stderr
    # Every expression of this split has a target: T-acc and J&F-T, no N-acc.
    assert _table(v2.stdout) == {
        "J": "100.00",
        "F": "100.00",
        "J&F": "100.00",
        "T-acc": "100.00",
        "J&F-T": "100.00",
    }
    v1 = _evaluate(pred, "data=mevis_v2_valid_u", f"data.root={split}", "--metric", "mevis")
    assert v1.returncode == 0 and list(_table(v1.stdout)) == ["J", "F", "J&F"]
    unscored = _evaluate(pred, "data=ref_youtube_vos_valid", "--data-root", split)
    assert unscored.returncode == 2 and unscored.stdout == ""
    assert "data.metric=null" in unscored.stderr and "Traceback" not in unscored.stderr
    unknown = _evaluate(pred, "data=mevis_v3", "--data-root", split)
    assert unknown.returncode == 2 and "Could not find 'data/mevis_v3'" in unknown.stderr


def test_table_shows_rounded_percentages(split: Path, tmp_path: Path) -> None:
    """J and F differ and neither is a whole percentage: each is rounded to two decimals."""
    files = _perfect_files()
    # vid_a/0 frame 0 predicted one row too low: J and F of that frame fall below 1.
    files["vid_a/0/00000.png"] = _png(_box(VIDEOS["vid_a"][0], 1, 3, 1, 3))
    pred = _write_folder(tmp_path / "pred", files)
    out_json = tmp_path / "scores.json"
    proc = _run(pred, "--data-root", split, "--jobs", "1", "--json", out_json)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out_json.read_text())
    row = _table(proc.stdout)
    assert scores["J"] != scores["F"] and scores["J"] < 1
    for name in ("J", "F", "J&F"):
        assert_percent(row[name], scores[name])
    # One expression of four has one frame of three at J = 2 / 6 (IoU of the shifted box).
    assert scores["J"] == pytest.approx((3 + (2 + 1 / 3) / 3) / 4)


# ----------------------------------------------------------------------------- damaged archives

VICTIM = "vid_a/1/00001.png"  # the member each case damages


def _zip(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    """A zip of ``files``, :data:`VICTIM` compressed with ``method``."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data, compress_type=method if name == VICTIM else zipfile.ZIP_STORED)
    return path


def _headers(path: Path) -> tuple[int, int]:
    """Offsets of :data:`VICTIM`'s local header and of its central-directory entry."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(VICTIM).header_offset
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(VICTIM)] != VICTIM.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    return local, central


def _patch(path: Path, changes: dict[int, bytes]) -> None:
    data = bytearray(path.read_bytes())
    for offset, value in changes.items():
        data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))


def _bad_crc(path: Path) -> None:
    _zip(path, _perfect_files())
    local, _ = _headers(path)
    start = local + 30 + len(VICTIM)  # the member's bytes (stored)
    _patch(path, {start + 20: bytes([path.read_bytes()[start + 20] ^ 0xFF])})


def _truncated_member(path: Path) -> None:
    _zip(path, _perfect_files(), zipfile.ZIP_DEFLATED)
    local, central = _headers(path)
    size = struct.unpack("<I", path.read_bytes()[central + 20 : central + 24])[0]
    half = struct.pack("<I", size // 2)  # the directory says the member ends half-way
    _patch(path, {local + 18: half, central + 20: half})


def _damaged_deflate(path: Path) -> None:
    _zip(path, _perfect_files(), zipfile.ZIP_DEFLATED)
    local, _ = _headers(path)
    _patch(path, {local + 30 + len(VICTIM) + 2: b"\xff" * 10})


def _unsupported_method(path: Path) -> None:
    _zip(path, _perfect_files(), zipfile.ZIP_DEFLATED)
    local, central = _headers(path)
    ppmd = struct.pack("<H", 98)  # PPMd, which zipfile cannot read
    _patch(path, {local + 8: ppmd, central + 10: ppmd})


def _encrypted(path: Path) -> None:
    _zip(path, _perfect_files())
    local, central = _headers(path)
    data = path.read_bytes()
    _patch(
        path, {local + 6: bytes([data[local + 6] | 1]), central + 8: bytes([data[central + 8] | 1])}
    )


def _with_victim(content: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        _zip(path, {**_perfect_files(), VICTIM: content})

    return make


def _png_with_bad_data() -> bytes:
    """The victim's PNG with its image data overwritten, every chunk CRC recomputed."""
    png = bytearray(_perfect_files()[VICTIM])
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    png[idat + 6 : idat + 10] = b"\xff" * 4
    png[idat + 4 + length : idat + 8 + length] = struct.pack(
        ">I", zlib.crc32(png[idat : idat + 4 + length])
    )
    return bytes(png)


def _png_with_bad_chunk_crc() -> bytes:
    png = bytearray(_perfect_files()[VICTIM])
    idat = png.index(b"IDAT")
    png[idat + 6 : idat + 10] = b"\x00" * 4
    return bytes(png)


DAMAGES = {
    "bad-crc": (_bad_crc, "fails its CRC check"),
    "truncated-member": (_truncated_member, "fails its CRC check"),
    "damaged-deflate-stream": (_damaged_deflate, "is damaged (Error -3"),
    "unsupported-compression": (_unsupported_method, "is compressed with method 98"),
    "encrypted-member": (_encrypted, "is encrypted; zip the masks again without a password"),
    "not-a-png": (_with_victim(b"GIF89a\x01\x00\x01\x00"), "is not a PNG image"),
    "jpeg-not-png": (_with_victim(_jpeg()), "is not a PNG image"),
    "truncated-png": (_with_victim(_png(np.ones((6, 8), bool))[:40]), "is a damaged PNG"),
    "png-chunk-crc": (_with_victim(_png_with_bad_chunk_crc()), "is a damaged PNG"),
    "png-that-does-not-decode": (_with_victim(_png_with_bad_data()), "does not decode"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_archive_is_one_line_naming_archive_and_member(
    split: Path, tmp_path: Path, damage: str
) -> None:
    make, reason = DAMAGES[damage]
    archive = tmp_path / f"{damage}.zip"
    make(archive)
    proc = _run(archive, "--data-root", split, "--jobs", "1")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "J&F" not in line]
    assert len(lines) == 1, proc.stderr  # no traceback, nor OpenCV's or libpng's messages
    assert lines[0].startswith("ERROR") and f"{archive}: member {VICTIM} " in lines[0]
    assert reason in lines[0]
