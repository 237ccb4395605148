"""ReferDINO-Plus legacy intermediates: safe reading, writing, and refusal of crafted pickles."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from rvos.legacy import LegacyFormatError, LegacyVideo, read_legacy_npz, write_legacy_npz


def make_video(num_frames=4, num_queries=3):
    rng = np.random.default_rng(1)
    expressions = {
        exp_id: {
            "scores": rng.random((num_frames, num_queries), dtype=np.float32),
            "boxes": rng.random((num_frames, num_queries, 4), dtype=np.float32),
            "masks": rng.standard_normal((num_frames, num_queries, 5, 7)).astype(np.float32),
        }
        for exp_id in ("0", "1")
    }
    return LegacyVideo("vid", "/elsewhere/JPEGImages/vid", (20, 28), expressions)


def test_roundtrip(tmp_path):
    video = make_video()
    write_legacy_npz(tmp_path / "vid.npz", video)
    back = read_legacy_npz(tmp_path / "vid.npz")
    assert (back.video_id, back.size, back.video_path) == ("vid", (20, 28), video.video_path)
    for exp_id, arrays in video.expressions.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(back.expressions[exp_id][key], value)


def test_written_file_is_what_numpy_allow_pickle_reads(tmp_path):
    # The original refine script reads with np.load(..., allow_pickle=True)[exp_id].item().
    video = make_video()
    write_legacy_npz(tmp_path / "vid.npz", video)
    data = np.load(tmp_path / "vid.npz", allow_pickle=True)  # trusted: we just wrote it
    assert list(data["size"]) == [20, 28]
    np.testing.assert_array_equal(data["0"].item()["scores"], video.expressions["0"]["scores"])


def test_reads_the_fixture(fixtures_dir):
    video = read_legacy_npz(fixtures_dir / "refine_tiny/legacy_stage1/videoA.npz")
    assert video.size == (540, 960) and sorted(video.expressions) == list("012345")
    assert video.expressions["0"]["masks"].shape[:2] == (40, 6)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pwned-by-legacy-npz",))


def crafted_npz(path, payload):
    header = {"descr": "|O", "fortran_order": False, "shape": ()}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    buffer.write(pickle.dumps(payload, protocol=3))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("size.npy", _npy(np.array([4, 4])))
        archive.writestr("0.npy", buffer.getvalue())


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = "/tmp/pwned-by-legacy-npz"
    if os.path.exists(marker):
        os.remove(marker)
    crafted_npz(tmp_path / "evil.npz", {"scores": RunsCode()})
    with pytest.raises(LegacyFormatError, match="refusing to unpickle posix.system"):
        read_legacy_npz(tmp_path / "evil.npz")
    assert not os.path.exists(marker)


def test_wrong_content_is_a_clear_error(tmp_path):
    crafted_npz(tmp_path / "odd.npz", {"scores": [1, 2, 3]})
    with pytest.raises(LegacyFormatError, match="odd.npz"):
        read_legacy_npz(tmp_path / "odd.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(LegacyFormatError, match="junk.npz"):
        read_legacy_npz(tmp_path / "junk.npz")
