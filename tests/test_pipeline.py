"""Pipeline bookkeeping: configuration fingerprints, pending videos, the score table."""

import copy

from rvos import intermediates as im
from rvos.config import compose_config
from rvos.pipeline import format_scores, pending_videos, stage_fingerprints, worker_config


def plain_config(*overrides):
    return worker_config(compose_config(list(overrides)))


def test_fingerprints_chain_downstream():
    base = plain_config()
    fps = stage_fingerprints(base)
    changed = copy.deepcopy(base)
    changed["stage2"]["score_threshold"] = 0.3
    new = stage_fingerprints(changed)
    assert new["stage1"] == fps["stage1"]
    assert new["stage2"] != fps["stage2"] and new["stage3"] != fps["stage3"]
    changed = copy.deepcopy(base)
    changed["stage1"]["top_k"] = 5
    assert all(
        a != b for a, b in zip(stage_fingerprints(changed).values(), fps.values(), strict=True)
    )


def test_records_of_earlier_code_are_recomputed(monkeypatch):
    """Stage-1 records made before expressions were read as written (and every query kept) have
    another fingerprint, even with the same settings: they are recomputed, never mixed in."""
    import rvos.pipeline

    current = stage_fingerprints(plain_config("stage1.top_k=10"))
    monkeypatch.setattr(rvos.pipeline, "STAGE1_REVISION", rvos.pipeline.STAGE1_REVISION - 1)
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
    assert stage_fingerprints(a)["stage1"] == stage_fingerprints(b)["stage1"]
    assert stage_fingerprints(c)["stage1"] != stage_fingerprints(b)["stage1"]


def test_pending_videos_after_a_crash(tmp_path):
    """A finished record is skipped; a leftover temp file or a truncated record is not trusted."""
    from test_intermediates import make_stage1

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
    table = format_scores({"fused.zip": {"J": 0.5512, "F": 0.6, "J&F": 0.5756}})
    assert table.splitlines()[1].split() == ["fused.zip", "55.12", "60.00", "57.56"]


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
