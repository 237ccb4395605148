"""Pipeline bookkeeping: configuration fingerprints, pending videos, archives, the report."""

import json
import os
import zipfile

import numpy as np
from text_tables import read_table

from referdino_plus.archives import archive_is_current, archive_stamp, set_aside_stale_archives
from referdino_plus.config import compose_config, load_config
from referdino_plus.pipeline import (
    RunResult,
    format_scores,
    pending_videos,
    stage_fingerprints,
    write_report,
)
from rvos import intermediates as im
from rvos.masks import RunLengthMasks
from rvos.mevis import MevisSplit


def plain_config(*overrides):
    return load_config(list(overrides))


def test_fingerprints_chain_downstream():
    fps = stage_fingerprints(plain_config())
    new = stage_fingerprints(plain_config("stage2.score_threshold=0.3"))
    assert new[1] == fps[1]
    assert new[2] != fps[2] and new[3] != fps[3]
    changed = stage_fingerprints(plain_config("stage1.top_k=5"))
    assert all(a != b for a, b in zip(changed.values(), fps.values(), strict=True))


def test_records_of_earlier_code_are_recomputed(monkeypatch):
    """Stage-1 records made before expressions were read as written (and every query kept) have
    another fingerprint, even with the same settings: they are recomputed, never mixed in."""
    import referdino_plus.pipeline as pipeline

    current = stage_fingerprints(plain_config("stage1.top_k=10"))
    monkeypatch.setattr(pipeline, "STAGE1_REVISION", pipeline.STAGE1_REVISION - 1)
    earlier = stage_fingerprints(plain_config("stage1.top_k=10"))
    assert all(a != b for a, b in zip(current.values(), earlier.values(), strict=True))


def test_speed_settings_do_not_invalidate_results():
    base = plain_config()
    tuned = plain_config(
        "stage2.offload_video_to_cpu=true",
        "stage2.retry_offloaded_on_oom=false",
        "stage1.feature_cache_device=cpu",
        "stage1.export_legacy=true",
    )
    assert stage_fingerprints(tuned) == stage_fingerprints(base)


def test_legacy_import_depends_only_on_its_inputs():
    a = plain_config("stage1.legacy_dir=/x", "stage1.model=mevis_swint")
    b = plain_config("stage1.legacy_dir=/x")
    c = plain_config("stage1.legacy_dir=/y")
    assert stage_fingerprints(a)[1] == stage_fingerprints(b)[1]
    assert stage_fingerprints(c)[1] != stage_fingerprints(b)[1]


def test_pending_videos_after_a_crash(tmp_path, make_stage1):
    """A finished record is skipped; a leftover temp file or a truncated record is not trusted."""
    done = im.stage_path(tmp_path, 1, "done")
    im.save_stage1(done, make_stage1(), fingerprint="fp")
    truncated = im.stage_path(tmp_path, 1, "truncated")
    truncated.write_bytes(done.read_bytes()[:200])
    (tmp_path / "stage1" / ".crashed.npz.abc.tmp").write_bytes(b"partial")
    ids = ["crashed", "done", "truncated"]
    assert pending_videos(tmp_path, 1, ids, "fp", overwrite=False) == ["crashed", "truncated"]
    assert pending_videos(tmp_path, 1, ids, "other", overwrite=False) == ids
    assert pending_videos(tmp_path, 1, ids, "fp", overwrite=True) == ids


def test_score_table_is_in_percent():
    table = format_scores({"fused.zip": {"J": 0.55126, "F": 0.6, "J&F": 0.57563}})
    assert read_table(table, row_label=True) == [
        {"": "fused.zip", "J": "55.13", "F": "60.00", "J&F": "57.56"}
    ]


def test_config_composes_after_sam2_was_imported():
    """sam2 initialises hydra on import; composing ours must neither fail nor break sam2's."""
    import sam2  # noqa: F401
    from hydra.core.global_hydra import GlobalHydra

    assert GlobalHydra.instance().is_initialized()
    cfg = compose_config(["stage2.prompt=box"])
    assert cfg.stage2.prompt == "box"
    from hydra import compose

    sam2_cfg = compose(config_name="configs/sam2.1/sam2.1_hiera_t.yaml")
    assert "model" in sam2_cfg


def _stamped_zip(path, stamp):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("v/0/00000.png", b"png")
        if stamp is not None:
            archive.comment = json.dumps(stamp).encode()


def test_archive_is_rewritten_when_a_record_is_newer_or_another_config_made_it(tmp_path):
    records = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for record in records:
        record.write_bytes(b"x")
    archive = tmp_path / "fused.zip"
    assert not archive_is_current(archive, records, "fp")  # missing
    _stamped_zip(archive, archive_stamp(3, "fp"))
    os.utime(records[0], (1000, 1000))
    os.utime(records[1], (2000, 2000))
    os.utime(archive, (2000, 2000))
    assert archive_is_current(archive, records, "fp")  # as new as the newest record
    assert not archive_is_current(archive, records, "other")  # another configuration's
    os.utime(records[1], (2001, 2001))  # a record recomputed after the archive was written
    assert not archive_is_current(archive, records, "fp")


def test_archives_of_another_configuration_are_set_aside(tmp_path, caplog):
    fingerprints = {1: "f1", 2: "f2", 3: "f3"}
    _stamped_zip(tmp_path / "stage1.zip", archive_stamp(1, "f1"))  # this configuration's
    _stamped_zip(tmp_path / "stage2.zip", archive_stamp(2, "old"))  # another one's
    _stamped_zip(tmp_path / "fused.zip", None)  # unknown origin
    moved = set_aside_stale_archives(tmp_path, fingerprints)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in moved) == [
        "stale/old/stage2.zip",  # by the fingerprint of the configuration that made it
        "stale/unknown/fused.zip",
    ]
    assert (tmp_path / "stage1.zip").is_file() and not (tmp_path / "fused.zip").exists()
    assert (
        "another configuration: moved to" in caplog.text and "stale/old/stage2.zip" in caplog.text
    )
    # Another archive of the same configuration later: set aside beside it, never over it.
    first = (tmp_path / "stale" / "old" / "stage2.zip").read_bytes()
    _stamped_zip(tmp_path / "stage2.zip", archive_stamp(2, "old"))
    (tmp_path / "stage2.zip").write_bytes((tmp_path / "stage2.zip").read_bytes() + b"x")
    assert set_aside_stale_archives(tmp_path, fingerprints) == [
        tmp_path / "stale" / "old" / "stage2-2.zip"
    ]
    assert (tmp_path / "stale" / "old" / "stage2.zip").read_bytes() == first


def test_report_never_mixes_decisions_of_another_configuration(tmp_path, make_split):
    root = make_split(
        tmp_path / "split",
        {v: {"frames": ["00000"], "expressions": {"0": "x"}} for v in ("old", "new")},
    )
    cfg = load_config([f"data.root={root}", f"work_dir={tmp_path / 'work'}"])
    fingerprints = stage_fingerprints(cfg)
    for video_id, fingerprint in (("old", "another-config"), ("new", fingerprints[3])):
        video = im.Stage3Video(video_id, ["00000"], 2, 2)
        video.expressions["0"] = im.ExpressionFusion(
            masks=RunLengthMasks.encode(np.zeros((1, 2, 2), dtype=bool)),
            multi_object=video_id == "old",
            frames_sam2_smaller=0,
            frames_both_nonempty=0,
        )
        im.save_stage3(
            im.stage_path(tmp_path / "work", 3, video_id), video, fingerprint=fingerprint
        )
    path = write_report(cfg, fingerprints, MevisSplit(root), RunResult())
    report = json.loads(path.read_text())
    assert list(report["fusion"]) == ["new/0"]


def _split_with_fused_records(tmp_path, make_split, cfg_overrides=()):
    """A one-frame split with ground truth and finished stage-3 records of this configuration."""
    from benchmark_layouts import rle

    root = make_split(
        tmp_path / "split", {"v": {"frames": ["00000"], "expressions": {"0": "x"}}}, size=(4, 4)
    )
    target = np.zeros((4, 4), dtype=bool)
    target[1:3, 1:3] = True
    (root / "mask_dict.json").write_text(json.dumps({"v-0": [rle(target)]}))
    cfg = load_config(
        [
            f"data.root={root}",
            f"work_dir={tmp_path / 'work'}",
            f"submission_dir={tmp_path / 'out'}",
            *cfg_overrides,
        ]
    )
    fingerprints = stage_fingerprints(cfg)
    video = im.Stage3Video("v", ["00000"], 4, 4)
    video.expressions["0"] = im.ExpressionFusion(
        masks=RunLengthMasks.encode(target[None]),
        multi_object=False,
        frames_sam2_smaller=0,
        frames_both_nonempty=0,
    )
    im.save_stage3(im.stage_path(tmp_path / "work", 3, "v"), video, fingerprint=fingerprints[3])
    return cfg, fingerprints, MevisSplit(root)


def test_an_archive_over_the_evaluation_limits_is_written_and_left_unscored(
    tmp_path, make_split, caplog
):
    from referdino_plus.pipeline import write_archives

    cfg, fingerprints, split = _split_with_fused_records(tmp_path, make_split)
    scored = RunResult()
    write_archives(cfg, fingerprints, split, scored)
    assert scored.scores["fused.zip"]["J&F"] == 1.0  # the record is the ground truth

    cfg, fingerprints, split = _split_with_fused_records(
        tmp_path / "limited", make_split, ["evaluation.limits.max_pixels=15"]
    )
    unscored = RunResult()
    write_archives(cfg, fingerprints, split, unscored)
    assert unscored.archives["fused.zip"].is_file() and "fused.zip" not in unscored.scores
    assert "is written but not scored" in caplog.text and "max_pixels" in caplog.text
