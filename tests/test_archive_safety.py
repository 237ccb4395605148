"""The evaluator on archives from strangers: bounded by ``evaluation.limits``, one line per fault.

A tiny MeViS split (one video of two 8x6 frames; expression ``0`` has ground truth, expression
``1`` none, so its size comes from the prediction) is scored from zips crafted byte by byte:
damaged directories, names outside the layout, members over the limits, PNGs whose header
disagrees with the ground truth, and a 1 MiB upload whose one member inflates to 1 GiB, whose
peak memory is measured against a normal archive's in a process of its own.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from rvos.archive_limits import ArchiveLimits, default_limits, limits_with_overrides
from rvos.archive_reader import ArchiveError, PredictionArchive
from rvos.mevis_metric import evaluate_archive
from rvos.options import OptionError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VIDEO = "vid"
FRAMES = ("00000", "00001")
HEIGHT, WIDTH = 6, 8
VICTIM = f"{VIDEO}/0/00001.png"  # the member most cases replace
# Peak memory a crafted archive may add to a normal one's (the limits' promise).
MEMORY_MARGIN_MB = 200


def _gt_mask(frame_idx: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[1 + frame_idx : 4 + frame_idx, 2:6] = True
    return mask


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int, image_data: bytes | None = None) -> bytes:
    """A PNG whose header says ``width x height`` (grey, 8 bits), every chunk's CRC right;
    ``image_data`` its IDAT (default: one row of zeros, compressed)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(width + 1)) if image_data is None else image_data
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _perfect() -> dict[str, bytes]:
    """The right answer: expression 0 its ground truth, expression 1 empty (no ground truth)."""
    files = {}
    for frame_idx, name in enumerate(FRAMES):
        files[f"{VIDEO}/0/{name}.png"] = _png(_gt_mask(frame_idx))
        files[f"{VIDEO}/1/{name}.png"] = _png(np.zeros((HEIGHT, WIDTH), dtype=bool))
    return files


@pytest.fixture()
def split(tmp_path: Path) -> Path:
    root = tmp_path / "valid_u"
    root.mkdir()
    expressions = {
        "0": {"exp": "the box", "obj_id": [0], "anno_id": [0]},
        "1": {"exp": "nothing", "obj_id": [1], "anno_id": [1]},
    }
    meta = {"videos": {VIDEO: {"frames": list(FRAMES), "expressions": expressions}}}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    rles = []
    for frame_idx in range(len(FRAMES)):
        rle = mask_utils.encode(np.asfortranarray(_gt_mask(frame_idx).astype(np.uint8)))
        rles.append({"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")})
    mask_dict = {"0": rles, "1": [None] * len(FRAMES)}
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root


def _zip(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _refusal(archive: Path, split: Path, limits: ArchiveLimits | None = None) -> str:
    """The one-line message refusing ``archive`` (the in-process API's)."""
    with pytest.raises(ValueError) as caught:
        evaluate_archive(archive, split, jobs=1, progress=False, limits=limits)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _limits(**changes: int | float) -> ArchiveLimits:
    return limits_with_overrides([f"evaluation.limits.{k}={v}" for k, v in changes.items()])


def _command(args: list, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )


def _standalone(*args: str | Path, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return _command(["-m", "stage3_fusion.evaluate", *args, "--jobs", "1"], cwd)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "J&F" not in line]
    assert len(lines) == 1, proc.stderr
    assert " ERROR " in f" {lines[0]}"
    return lines[0]


# ----------------------------------------------------------------------------- a normal archive


def test_a_normal_archive_scores_100_with_nothing_unexpected(split: Path, tmp_path: Path) -> None:
    result = evaluate_archive(_zip(tmp_path / "ok.zip", _perfect()), split, jobs=1, progress=False)
    assert (result.j, result.f) == (1.0, 1.0)
    assert result.unexpected.count == 0
    assert result.to_json()["unexpected_members"] == {"count": 0, "names": []}


# ----------------------------------------------------------------------------- the zip itself


def _cut_in_half(path: Path) -> None:
    _zip(path, _perfect())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged_directory(path: Path) -> None:
    _zip(path, _perfect())
    data = bytearray(path.read_bytes())
    at = data.rindex(b"PK\x01\x02")  # the last directory entry loses its signature
    data[at : at + 4] = b"XXXX"
    path.write_bytes(bytes(data))


def _end_record_undercounts(path: Path) -> None:
    _zip(path, _perfect())
    data = bytearray(path.read_bytes())
    at = data.rindex(b"PK\x05\x06")
    data[at + 8 : at + 12] = struct.pack("<HH", 1, 1)  # "1 member" on this disk and in all
    path.write_bytes(bytes(data))


ZIP_DAMAGES = {
    "cut-in-half": (_cut_in_half, "no end of central directory record: cut short?"),
    "damaged-directory": (_damaged_directory, "is a damaged zip file (Bad magic number"),
    "end-record-undercounts": (_end_record_undercounts, "its end record 1"),
}


@pytest.mark.parametrize("damage", list(ZIP_DAMAGES))
def test_a_damaged_zip_is_one_line_naming_it(split: Path, tmp_path: Path, damage: str) -> None:
    make, reason = ZIP_DAMAGES[damage]
    archive = tmp_path / f"{damage}.zip"
    make(archive)
    message = _refusal(archive, split)
    assert message.startswith(f"prediction {archive} ") and reason in message


# ----------------------------------------------------------------------------- names


UNSAFE_NAMES = {
    "absolute": ("/vid/0/00001.png", "is an absolute path"),
    "drive": ("C:/vid/0/00001.png", "is an absolute path"),
    "parent": ("../vid/0/00001.png", "is not a plain relative path"),
    "parent-inside": ("vid/0/../0/00001.png", "is not a plain relative path"),
    "dot": ("vid/./0/00001.png", "is not a plain relative path"),
    "empty-folder": ("vid//0/00001.png", "is not a plain relative path"),
    "backslashes": ("vid\\0\\00001.png", "uses backslashes"),
    "line-break": ("vid/0/00001.png\nINFO all good", "has a character that does not print"),
}


@pytest.mark.parametrize("case", list(UNSAFE_NAMES))
def test_a_name_outside_the_layout_refuses_the_archive(
    split: Path, tmp_path: Path, case: str
) -> None:
    """Zip-slip and friends: refused whole, in one line that names the member (escaped when it
    would break the line), before anything is read."""
    name, reason = UNSAFE_NAMES[case]
    archive = _zip(tmp_path / f"{case}.zip", {**_perfect(), name: _png(_gt_mask(1))})
    message = _refusal(archive, split)
    shown = name if name.isprintable() else ascii(name)
    assert message.startswith(f"{archive}: member {shown} {reason}")


def test_a_name_twice_refuses_the_archive(split: Path, tmp_path: Path) -> None:
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in _perfect().items():
            zf.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr(VICTIM, _png(np.ones((HEIGHT, WIDTH), dtype=bool)))
    message = _refusal(archive, split)
    assert message.startswith(f"{archive}: member {VICTIM} appears twice")


def test_members_the_layout_does_not_expect_are_counted_and_named(
    split: Path, tmp_path: Path
) -> None:
    extra = {
        "__MACOSX/vid/0/._00000.png": b"\x00\x05\x16\x07",
        "other_video/0/00000.png": _png(np.ones((HEIGHT, WIDTH), dtype=bool)),
        f"{VIDEO}/0/00002.png": _png(np.ones((HEIGHT, WIDTH), dtype=bool)),  # not a frame
        f"{VIDEO}/0/notes.txt": b"hello",
        f"{VIDEO}/7/00000.png": _png(np.ones((HEIGHT, WIDTH), dtype=bool)),  # no expression 7
        "readme.txt": b"hello",
    }
    archive = _zip(tmp_path / "extra.zip", {**_perfect(), **extra})
    out_json = tmp_path / "scores.json"
    proc = _standalone(archive, "--data-root", split, "--json", out_json)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "unexpected members (not scored): 6"
    assert "6 member(s) the layout does not expect, not scored: __MACOSX/" in proc.stderr
    scores = json.loads(out_json.read_text())
    assert scores["J&F"] == 1.0  # scored as the normal archive
    assert scores["unexpected_members"] == {"count": 6, "names": sorted(extra)}


def test_unexpected_files_of_a_folder_and_outside_a_wrapper_are_counted(
    split: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "pred"
    for name, data in {**_perfect(), f"{VIDEO}/0/00009.png": b"x"}.items():
        path = folder / "Annotations" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (folder / "README").write_text("hello")
    result = evaluate_archive(folder, split, jobs=1, progress=False)
    assert result.jf == 1.0
    assert result.unexpected.names == ("Annotations/vid/0/00009.png", "README")


# ----------------------------------------------------------------------------- members


def test_a_member_zipped_with_bzip2_is_refused_before_reading(split: Path, tmp_path: Path) -> None:
    archive = tmp_path / "bzip2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in _perfect().items():
            method = zipfile.ZIP_BZIP2 if name == VICTIM else zipfile.ZIP_STORED
            zf.writestr(name, data, compress_type=method)
    message = _refusal(archive, split)
    assert message.startswith(f"{archive}: member {VICTIM} is compressed with method 12,")


def test_content_that_is_not_a_png_names_the_member(split: Path, tmp_path: Path) -> None:
    archive = _zip(tmp_path / "zeros.zip", {**_perfect(), VICTIM: bytes(64)})
    assert _refusal(archive, split).startswith(f"{archive}: member {VICTIM} is not a PNG image")


def test_a_png_of_another_size_is_refused_from_its_header(split: Path, tmp_path: Path) -> None:
    """The size is checked before decoding: this PNG's image data would not decode."""
    undecodable = _png_claiming(9, 9, image_data=b"\xff" * 16)
    archive = _zip(tmp_path / "size.zip", {**_perfect(), VICTIM: undecodable})
    message = _refusal(archive, split)
    assert message.startswith(f"{VIDEO}/0, frame 1: prediction is 9x9, ground truth is 8x6")
    assert f"{archive}: member {VICTIM}; not decoded" in message


def test_frames_without_ground_truth_must_agree_with_the_first(split: Path, tmp_path: Path) -> None:
    """Expression 1 has no ground truth: its first PNG's header gives the size."""
    files = {**_perfect(), f"{VIDEO}/1/00001.png": _png_claiming(9, 9)}
    message = _refusal(_zip(tmp_path / "size.zip", files), split)
    assert message.startswith(f"{VIDEO}/1, frame 1: prediction is 9x9, ground truth is 8x6")


def test_pixels_are_bounded_before_decoding(split: Path, tmp_path: Path) -> None:
    """Expression 1 has no ground truth to compare with: the header's pixels are bounded (here
    a 9000x9000 image, 81 MB of pixels, that no decoder gets to see)."""
    bomb = _png_claiming(9000, 9000)
    files = {**_perfect(), f"{VIDEO}/1/00000.png": bomb, f"{VIDEO}/1/00001.png": bomb}
    archive = _zip(tmp_path / "pixels.zip", files)
    assert _refusal(archive, split).startswith(
        f"{archive}: member {VIDEO}/1/00000.png is a 9000x9000 PNG, over "
        "evaluation.limits.max_pixels=8294400 (not decoded)"
    )


def test_a_member_over_the_size_limit_is_refused_from_the_directory(
    split: Path, tmp_path: Path
) -> None:
    archive = _zip(tmp_path / "big.zip", {**_perfect(), VICTIM: bytes(3 * 2**20)})
    message = _refusal(archive, split, _limits(max_member_mib=2))
    assert message.startswith(
        f"{archive}: member {VICTIM} inflates to 3.0 MiB, over evaluation.limits.max_member_mib=2"
    )


def test_a_member_over_the_ratio_limit_is_refused_from_the_directory(
    split: Path, tmp_path: Path
) -> None:
    archive = _zip(
        tmp_path / "ratio.zip", {**_perfect(), VICTIM: bytes(2**20)}, zipfile.ZIP_DEFLATED
    )
    message = _refusal(archive, split)
    assert message.startswith(f"{archive}: member {VICTIM} inflates ")
    assert "times its compressed size, over evaluation.limits.max_ratio=1000" in message


def test_the_total_and_the_member_count_are_bounded(split: Path, tmp_path: Path) -> None:
    files = {**_perfect(), "a.bin": bytes(2**20), "b.bin": bytes(2**20)}
    archive = _zip(tmp_path / "total.zip", files)
    message = _refusal(archive, split, _limits(max_total_mib=1))
    assert message.startswith(f"prediction {archive} inflates to 2.0 MiB in all, over ")
    message = _refusal(archive, split, _limits(max_members=5))
    assert message.startswith(f"prediction {archive} holds 6 members, over ")
    assert "evaluation.limits.max_members=5" in message


def test_the_directory_size_is_bounded(split: Path, tmp_path: Path) -> None:
    long_names = {f"{VIDEO}/extra/{i:04d}{'x' * 1000}": b"" for i in range(1100)}
    archive = _zip(tmp_path / "directory.zip", {**_perfect(), **long_names})
    message = _refusal(archive, split, _limits(max_directory_mib=1))
    assert message.startswith(f"prediction {archive} has a 1.1 MiB directory, over ")


def test_a_member_larger_than_its_directory_entry_says_stops_at_the_entry(tmp_path: Path) -> None:
    """A member whose directory entry declares 100 bytes and whose data inflates to 64 MiB: the
    stream stops one byte past the declaration and the member is refused as damaged."""
    archive = _zip(tmp_path / "liar.zip", {VICTIM: bytes(64 * 2**20)}, zipfile.ZIP_DEFLATED)
    _declare_size(archive, 100)
    reader = PredictionArchive(archive, default_limits())
    tracemalloc.start()
    with pytest.raises(ArchiveError) as caught:
        reader.read(VIDEO, "0", "00001.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(caught.value) == (
        f"{archive}: member {VICTIM} fails its CRC check: the archive is damaged; "
        "write or download it again"
    )
    assert peak < 2 * 2**20  # not 64 MiB


def _declare_size(path: Path, size: int) -> None:
    """Make the only member's local header and directory entry declare ``size`` bytes."""
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", size)
    data[18 + 4 : 18 + 8] = struct.pack("<I", size)  # local header: file size at offset 22
    path.write_bytes(bytes(data))


def test_a_folder_file_over_the_size_limit_is_refused(split: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pred"
    for name, data in {**_perfect(), VICTIM: bytes(2 * 2**20)}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    message = _refusal(folder, split, _limits(max_member_mib=1))
    assert message.startswith(f"{folder / VICTIM} is larger than evaluation.limits.max_member_mib")


# ----------------------------------------------------------------------------- nothing written


def test_nothing_is_written_anywhere(split: Path, tmp_path: Path, monkeypatch) -> None:
    """The evaluator extracts nothing: a zip-slip archive is refused, and a normal archive with
    an unexpected member is scored, from a folder that stays empty."""

    def extract(*args, **kwargs):
        raise AssertionError("the evaluator extracted a member")

    monkeypatch.setattr(zipfile.ZipFile, "extract", extract)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract)
    slip = _zip(tmp_path / "slip.zip", {**_perfect(), "../../escaped.png": _png(_gt_mask(0))})
    extra = _zip(tmp_path / "extra.zip", {**_perfect(), "x/y/z.png": _png(_gt_mask(0))})
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(workdir)
    _refusal(slip, split)
    assert evaluate_archive(extra, split, jobs=2, progress=False).unexpected.count == 1
    proc = _standalone(slip, "--data-root", split, cwd=workdir)
    assert proc.returncode == 1
    assert "member ../../escaped.png is not a plain relative path" in _one_error_line(proc)
    assert sorted(tmp_path.rglob("*")) == before
    assert not (tmp_path.parent / "escaped.png").exists()


# ----------------------------------------------------------------------------- limits as settings


def test_limits_come_from_the_yaml_and_the_command_line(split: Path, tmp_path: Path) -> None:
    limits = default_limits()
    assert (limits.max_member_mib, limits.max_ratio) == (32, 1000)
    archive = _zip(tmp_path / "big.zip", {**_perfect(), VICTIM: bytes(3 * 2**20)})
    refused = _standalone(archive, "--data-root", split, "evaluation.limits.max_member_mib=2")
    assert refused.returncode == 1
    assert "inflates to 3.0 MiB, over evaluation.limits.max_member_mib=2" in _one_error_line(
        refused
    )
    app = _command(
        ["run_pipeline.py", "evaluate", archive, "--data-root", split, "--jobs", "1"]
        + ["evaluation.limits.max_member_mib=2"]
    )
    assert app.returncode == 1 and "max_member_mib=2" in _one_error_line(app)
    bad = _standalone(archive, "--data-root", split, "evaluation.limits.max_ratio=0")
    assert bad.returncode == 2
    assert "evaluation.limits.max_ratio=0.0: expected a value in [1, inf]" in _one_error_line(bad)
    with pytest.raises(OptionError, match=r"^evaluation\.jobs=1: not a setting of evaluation"):
        limits_with_overrides(["evaluation.jobs=1"])


# ----------------------------------------------------------------------------- memory


def _peak_rss_mb(*args: str | Path) -> tuple[float, subprocess.CompletedProcess]:
    """Peak resident memory (MB) of the standalone evaluator run in a process of its own."""
    probe = (
        "import resource, subprocess, sys\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(proc.stderr)\n"
        "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [sys.executable, "-m", "stage3_fusion.evaluate", *args, "--jobs", "1"]
    proc = _command(["-c", probe, *command])
    returncode, kib = proc.stdout.split()
    proc.returncode = int(returncode)
    return int(kib) / 1024, proc


def _zeros_member(path: Path, name: str, size: int) -> Path:
    """A zip whose one member ``name`` is ``size`` zero bytes, deflated as it is written (never
    held whole in memory)."""
    chunk = bytes(2**20)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open(name, "w", force_zip64=True) as member,
    ):
        for _ in range(size // len(chunk)):
            member.write(chunk)
    return path


@pytest.mark.slow
def test_peak_memory_on_a_high_ratio_archive_stays_near_a_normal_ones(
    split: Path, tmp_path: Path
) -> None:
    """A 1 MiB upload whose one member inflates to 1 GiB: refused from its directory entry, with
    the memory of a normal archive's scoring (today's number and the one before the limits:
    docs/benchmarks.md, Limits of the evaluator)."""
    normal = _zip(tmp_path / "normal.zip", _perfect())
    bomb = _zeros_member(tmp_path / "bomb.zip", VICTIM, 2**30)
    assert bomb.stat().st_size < 2 * 2**20
    normal_mb, proc = _peak_rss_mb(normal, "--data-root", split)
    assert proc.returncode == 0, proc.stderr
    bomb_mb, proc = _peak_rss_mb(bomb, "--data-root", split)
    print(f"peak RSS: normal archive {normal_mb:.0f} MB, 1 GiB member {bomb_mb:.0f} MB")
    assert bomb_mb < normal_mb + MEMORY_MARGIN_MB
    assert proc.returncode == 1
    assert f"member {VICTIM} inflates to 1024.0 MiB" in _one_error_line(proc)
