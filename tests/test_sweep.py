"""Sweeps on a labelled split (``run_pipeline.py sweep``): hydra's grammar, records shared by
fingerprint, each point scored as its own run would be, resume, and errors before any work.

The labelled split is two short clips with a box as ground truth, run with the tiny fixture
models; every run and sweep of the module shares one work_dir, as a user's would.
"""

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from text_tables import assert_percent, read_table

from referdino_plus import pipeline, sweep
from referdino_plus.config import load_config
from referdino_plus.pipeline import stage_fingerprints
from referdino_plus.sweep_report import best_commands, plot_size

STAGE3_SWEEP = "stage3.shrink_ratio=[2,3],[999,1000]"  # the default (the first run's), another


# ----------------------------------------------------------------------------- the grammar


def test_hydra_expands_the_sweeps_into_their_product():
    fixed, keys, points = sweep.expand(
        [
            "stage2.score_threshold=0.2,0.3",
            "stage1.top_k=5",
            "stage3.shrink_ratio=[1,2],[2,3]",
            "stage2.num_points=range(10,30,10)",
            "stage2.prompt=choice(mask,box)",
        ]
    )
    assert fixed == ["stage1.top_k=5"]
    assert keys == [
        "stage2.score_threshold",
        "stage3.shrink_ratio",
        "stage2.num_points",
        "stage2.prompt",
    ]
    assert len(points) == 16
    assert points[0] == {
        "stage2.score_threshold": "0.2",
        "stage3.shrink_ratio": "[1,2]",
        "stage2.num_points": "10",
        "stage2.prompt": "mask",
    }
    assert points[-1]["stage2.prompt"] == "box" and points[-1]["stage2.score_threshold"] == "0.3"
    assert {p["stage3.shrink_ratio"] for p in points} == {"[1,2]", "[2,3]"}


def test_best_point_command_runs_it_on_valid_and_test(tmp_path):
    fixed = ["data=mevis_valid_u", "stage1.top_k=5", f"work_dir={tmp_path}", "name=tune"]
    [point] = sweep.build_points(fixed, ["stage3.shrink_ratio"], [{"stage3.shrink_ratio": "[1,2]"}])
    plan = sweep.SweepPlan(fixed, ["stage3.shrink_ratio"], [point], None, tmp_path, point.cfg)
    result = sweep.PointResult(point, {"J": 0.5, "F": 0.5, "J&F": 0.5}, tmp_path, ran=True)
    commands = dict(best_commands(plan, result, ["--gids", "0", "1"]))
    assert list(commands) == ["mevis_valid", "mevis_test"]
    for split, command in commands.items():
        words = shlex.split(command)
        assert words[:5] == ["python", "run_pipeline.py", "--gids", "0", "1"]
        assert f"data={split}" in words and words[words.index("--name") + 1] == f"tune-{split}"
        assert not any(w.startswith(("work_dir=", "name=", "data=mevis_valid_u")) for w in words)
        # The same stages as the point: every fingerprint equal.
        overrides = [w for w in words if "=" in w]
        assert stage_fingerprints(load_config(overrides)) == point.fingerprints


# ----------------------------------------------------------------------------- end to end


def _rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


@pytest.fixture(scope="module")
def labelled_split(tmp_path_factory, make_split):
    """Two short videos, a box as every expression's ground truth."""
    videos = {
        "vid1": {
            "frames": ["00000", "00001", "00002"],
            "expressions": {"0": "the dog", "1": "a cat"},
        },
        "vid2": {"frames": ["00000", "00001"], "expressions": {"0": "the bird flying away"}},
    }
    root = make_split(tmp_path_factory.mktemp("labelled"), videos, size=(72, 96))
    box = np.zeros((72, 96), dtype=bool)
    box[10:40, 20:60] = True
    mask_dict = {
        f"{video_id}-{exp_id}": [_rle(box)] * len(spec["frames"])
        for video_id, spec in videos.items()
        for exp_id in spec["expressions"]
    }
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root


@pytest.fixture(scope="module")
def base(tiny_model_overrides, fixtures_dir, labelled_split, tmp_path_factory):
    """The sweep's fixed overrides: the split, the tiny models, SAM 2's quiet weights (they
    track little, so the fusion's settings change the masks)."""
    work = tmp_path_factory.mktemp("run")
    return [
        *tiny_model_overrides,
        f"stage2.checkpoint={fixtures_dir / 'sam2_tiny' / 'weights_quiet.pt'}",
        "stage1.top_k=3",
        f"data.root={labelled_split}",
        f"work_dir={work / 'work'}",
        f"submission_dir={work / 'submissions'}",
    ]


@pytest.fixture(scope="module")
def work(base):
    """The run's work_dir, where the sweep lives (``work_dir/sweep``)."""
    return Path(load_config(base).work_dir)


@pytest.fixture(scope="module")
def first_run(run_cli, base):
    """A run of the pipeline in work_dir (the default stage3.shrink_ratio, [2,3]), before any
    sweep."""
    return run_cli("--cpu", *base)


@pytest.fixture(scope="module")
def stage3_sweep(first_run, run_cli, base, work):
    """A sweep over a stage-3 key, with the times of the run's records before it."""
    records = sorted(work.glob("stage[123]/*.npz"))
    before = {path: path.stat().st_mtime_ns for path in records}
    proc = run_cli("sweep", "--cpu", *base, STAGE3_SWEEP)
    return proc, before


@pytest.mark.slow
def test_stage3_sweep_runs_no_stage_1_or_2(stage3_sweep, work):
    proc, before = stage3_sweep
    root = work / "sweep"
    # One set of stage-1 and stage-2 records, the run's own (linked, not made again)...
    for stage in (1, 2):
        [shared] = [p for p in (root / f"stage{stage}").iterdir() if p.is_dir()]
        linked = sorted(shared.glob("*.npz"))
        assert [p.name for p in linked] == ["vid1.npz", "vid2.npz"]
        for path in linked:
            original = work / f"stage{stage}" / path.name
            assert path.samefile(original)
            assert path.stat().st_mtime_ns == before[original]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # ... and a set of stage-3 records per point, made after every stage-2 record.
    stage3 = [p for p in (root / "stage3").iterdir() if p.is_dir()]
    assert len(stage3) == 2
    newest_stage2 = max(t for p, t in before.items() if p.parent.name == "stage2")
    for folder in stage3:
        for record in folder.glob("*.npz"):
            assert record.stat().st_mtime_ns > newest_stage2
    for folder in (root / "points").iterdir():
        report = json.loads((folder / "report.json").read_text())
        assert report["status"] == "ok" and list(report["stages"]) == ["3"]


@pytest.mark.slow
def test_sweep_prints_and_writes_its_table_plot_and_best_command(stage3_sweep, work):
    proc, _ = stage3_sweep
    lines = proc.stdout.splitlines()
    rows = read_table("\n".join(lines[:3]))
    assert [row["stage3.shrink_ratio"] for row in rows] == ["[2,3]", "[999,1000]"]
    assert list(rows[0]) == ["point", "stage3.shrink_ratio", "J&F", "J", "F"]
    table = json.loads((work / "sweep" / "sweep.json").read_text())
    for row, saved in zip(rows, table["points"], strict=True):
        for score in ("J&F", "J", "F"):
            assert_percent(row[score], saved[score])
    scores = [saved["J&F"] for saved in table["points"]]
    assert len(set(scores)) > 1, "the fusion settings should change the scores"
    best = scores.index(max(scores))
    assert [row["point"] for row in rows][best] == f"*{best + 1}"
    assert table["best"]["point"] == best + 1
    assert f"'stage3.shrink_ratio={rows[best]['stage3.shrink_ratio']}'" in lines[4]
    csv_lines = (work / "sweep" / "sweep.csv").read_text().splitlines()
    assert csv_lines[0] == "point,stage3.shrink_ratio,J&F,J,F,fingerprint,archive"
    assert len(csv_lines) == 3
    with Image.open(work / "sweep" / "sweep.png") as image:
        assert image.size == plot_size(1)


@pytest.mark.slow
def test_every_point_scores_as_its_own_run_and_evaluate(
    stage3_sweep, first_run, run_cli, base, work, tmp_path
):
    """Each point's J&F, J and F equal, exactly, those of ``evaluate`` on the fused archive of
    that point's own run: the first run for the default setting, for the others a run of stage 3
    in a work_dir of its own (on copies of the stage-1/2 records)."""
    table = json.loads((work / "sweep" / "sweep.json").read_text())
    default = load_config(base).stage3.shrink_ratio
    for saved in table["points"]:
        setting = f"stage3.shrink_ratio={saved['stage3.shrink_ratio']}"
        if json.loads(saved["stage3.shrink_ratio"]) == default:
            fused = Path(load_config(base).submission_dir) / "fused.zip"
            report = json.loads((work / "report.json").read_text())
            assert {k: saved[k] for k in ("J&F", "J", "F")} == report["scores"]["fused.zip"]
        else:
            own = tmp_path / f"point{saved['point']}"
            for stage in (1, 2):
                shutil.copytree(work / f"stage{stage}", own / "work" / f"stage{stage}")
            places = [f"work_dir={own / 'work'}", f"submission_dir={own / 'submissions'}"]
            run_cli("--cpu", "--stages", "3", *base, setting, *places)
            fused = own / "submissions" / "fused.zip"
        scores = tmp_path / f"scores{saved['point']}.json"
        run_cli("evaluate", fused, *base, "--json", scores)
        evaluated = json.loads(scores.read_text())
        assert {k: saved[k] for k in ("J&F", "J", "F")} == {
            k: evaluated[k] for k in ("J&F", "J", "F")
        }


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_points(
    stage3_sweep, base, monkeypatch
):
    overrides = [*base, "stage3.majority=[1,3],[1,1]"]
    real_run = pipeline.run
    calls, interrupt_at = [], [2]

    def run(cfg, **kwargs):
        assert kwargs["devices"] == ["cpu"]  # the sweep's, for each point's run
        calls.append(cfg.stage3.majority)
        if len(calls) in interrupt_at:
            raise KeyboardInterrupt
        return real_run(cfg, **kwargs)

    monkeypatch.setattr(pipeline, "run", run)
    plan = sweep.plan_sweep(overrides)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(plan, ["cpu"])
    first = sweep.point_dir(plan.root, plan.points[0]) / sweep.RESULT_FILE
    stamp = first.stat().st_mtime_ns
    assert not (sweep.point_dir(plan.root, plan.points[1]) / sweep.RESULT_FILE).exists()

    calls.clear()
    interrupt_at.clear()
    results = sweep.run_sweep(sweep.plan_sweep(overrides), ["cpu"])
    assert calls == [[1, 1]]  # the finished point is not run again
    assert [r.ran for r in results] == [False, True]
    assert first.stat().st_mtime_ns == stamp
    # A rerun of a finished sweep runs nothing.
    calls.clear()
    again = sweep.run_sweep(sweep.plan_sweep(overrides), ["cpu"])
    assert calls == [] and [r.scores for r in again] == [r.scores for r in results]


@pytest.mark.slow
def test_a_stage2_point_starts_at_stage_2(stage3_sweep, base):
    plan = sweep.plan_sweep([*base, "stage2.score_threshold=0.275,0.5"])
    sweep.adopt_run_records(plan)
    for point, expected in zip(plan.points, ([3], [2, 3]), strict=True):
        folder = sweep.point_dir(plan.root, point)
        sweep.link_stage_dirs(plan.root, folder, point.fingerprints)
        cfg = sweep.point_config(point, folder)
        assert sweep.stages_to_run(cfg, point.fingerprints, plan.split) == expected


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("sweep_words", "message"),
    [
        (["stage3.shrnk=[1,2],[2,3]"], "stage3.shrnk"),
        (["archive.jobs=1,2"], "archive.jobs cannot be swept"),
        (["stage2.feature_cache_frames=8,16"], "make the same configuration"),
        (["stage2.score_threshold=interval(0.2,0.4)"], "an interval has none to list"),
        (["stage2.score_threshold=0.3"], "nothing to sweep"),
        (["stage2.score_threshold=0.2,7"], "stage2.score_threshold=7"),
        (["stage2.score_threshold=0.2,0.2"], "a value is given twice"),
        (["stage2.score_threshold=[0.2,0.3"], "not an override hydra reads"),
        (
            ["launcher=slurm", "launcher.slurm.wait=false", "stage3.majority=[1,2],[1,3]"],
            "launcher.slurm.wait=false",
        ),
    ],
)
def test_a_sweep_that_cannot_run_is_refused_before_any_work(
    labelled_split, tmp_path, sweep_words, message
):
    with pytest.raises(sweep.SweepError, match=re.escape(message)) as refused:
        sweep.plan_sweep([f"data.root={labelled_split}", f"work_dir={tmp_path}", *sweep_words])
    assert "\n" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_split_without_ground_truth_is_one_line_before_any_work(run_cli, fixtures_dir, tmp_path):
    split = fixtures_dir / "refine_tiny" / "mevis"  # frames and expressions, no mask_dict.json
    proc = run_cli("sweep", f"data.root={split}", f"work_dir={tmp_path}", STAGE3_SWEEP, check=False)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert f"{split} has no ground truth" in line
    assert not (tmp_path / "sweep").exists()


def test_points_keep_their_configuration_apart(tmp_path):
    """Each point's run folder and records are named by its fingerprints; the run settings a
    point changes (its folders, no scoring of its own, no pictures) change none of them."""
    fixed = [f"work_dir={tmp_path}"]
    points = sweep.build_points(
        fixed, ["stage3.majority"], [{"stage3.majority": v} for v in ("[1,2]", "[1,3]")]
    )
    assert points[0].fingerprints[2] == points[1].fingerprints[2]
    assert points[0].fingerprint != points[1].fingerprint
    for point in points:
        folder = sweep.point_dir(tmp_path, point)
        cfg = sweep.point_config(point, folder)
        assert stage_fingerprints(cfg) == point.fingerprints
        assert cfg.work_dir == str(folder) and not cfg.evaluation.enabled


@pytest.mark.slow
def test_a_second_sweep_of_one_folder_is_refused_naming_the_first(stage3_sweep, base):
    from referdino_plus.workdir_lock import WorkDirBusy, hold_work_dir

    plan = sweep.plan_sweep([*base, STAGE3_SWEEP])
    with (
        hold_work_dir(plan.root, plan.base.run, command="the first sweep"),
        pytest.raises(WorkDirBusy, match="pid"),
    ):
        sweep.run_sweep(plan, ["cpu"])
    assert len(sweep.run_sweep(plan, ["cpu"])) == len(plan.points)  # once it is free
