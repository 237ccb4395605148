"""``data=<benchmark>``: one configuration selects layout, answer rule, archive and metric."""

import pytest
from text_tables import read_table

from referdino_plus.config import ConfigError, compose_config, load_config
from referdino_plus.pipeline import check_benchmark, format_scores, stage_fingerprints
from rvos.splits import DataError, Split


@pytest.mark.parametrize(
    ("data", "expected", "model"),
    [
        ("mevis_valid_u", ("mevis", "threshold_or_top1", "mevis", "mevis"), "mevis_swinb"),
        ("mevis_valid", ("mevis", "threshold_or_top1", "mevis", "mevis"), "mevis_swinb"),
        ("mevis_v2_valid_u", ("mevis", "threshold_or_none", "mevis", "mevis_v2"), "mevis_swinb"),
        (
            "ref_youtube_vos_valid",
            ("ref_youtube_vos", "top1", "ref_youtube_vos", None),
            "ytvos_swinb",
        ),
        (
            "ref_davis17_valid",
            ("ref_davis17", "top1_per_annotator", "ref_davis17", "davis17"),
            "davis_swinb",
        ),
    ],
)
def test_each_benchmark_is_one_config(data, expected, model):
    cfg = load_config([f"data={data}"])
    assert (cfg.data.layout, cfg.data.answer, cfg.data.archive, cfg.data.metric) == expected
    assert cfg.stage1.model == model  # the ReferDINO model ReferDINO evaluates it with
    # The command line still wins over the benchmark's model.
    assert load_config([f"data={data}", "stage1.model=x"]).stage1.model == "x"


def test_unregistered_names_are_one_line_errors():
    with pytest.raises(
        ConfigError, match=r"data.layout='davis': not a registered name \(available"
    ):
        compose_config(["data.layout=davis"])
    with pytest.raises(ConfigError, match="data.metric='iou'"):
        compose_config(["data.metric=iou"])


def test_answer_rule_enters_the_stage1_fingerprint():
    v1 = stage_fingerprints(load_config(["data=mevis_valid_u"]))
    v2 = stage_fingerprints(load_config(["data=mevis_v2_valid_u"]))
    assert all(a != b for a, b in zip(v1.values(), v2.values(), strict=True))
    # The v1 rule on another split, archive or metric: the same stage-1 records.
    same = load_config(["data=mevis_v2_valid_u", "data.answer=threshold_or_top1"])
    assert stage_fingerprints(same) == v1
    archive_only = load_config(["data.archive=ref_youtube_vos", "data.metric=null"])
    assert stage_fingerprints(archive_only) == v1


def test_benchmark_that_does_not_fit_the_split_fails_before_running(tmp_path, make_split):
    root = make_split(tmp_path, {"v": {"frames": ["00000"], "expressions": {"0": "x"}}})
    split = Split(root, "mevis")
    with pytest.raises(DataError, match="data.answer=top1_per_annotator"):
        check_benchmark(load_config(["data.answer=top1_per_annotator"]), split)
    with pytest.raises(DataError, match="data.archive=ref_davis17 needs expressions grouped"):
        check_benchmark(load_config(["data.archive=ref_davis17"]), split)


def test_score_table_grows_the_benchmark_columns():
    table = format_scores(
        {
            "stage1.zip": {"J": 0.5, "F": 0.5, "J&F": 0.5, "N-acc": 1.0, "T-acc": 0.25},
            "fused.zip": {"J": 0.6, "F": 0.7, "J&F": 0.65},
        }
    )
    assert read_table(table, row_label=True) == [
        {"": "stage1.zip", "J": "50.00", "F": "50.00", "J&F": "50.00", "N-acc": "100.00",
         "T-acc": "25.00"},
        {"": "fused.zip", "J": "60.00", "F": "70.00", "J&F": "65.00", "N-acc": "-", "T-acc": "-"},
    ]  # fmt: skip
    davis = format_scores({"fused.zip": {"J&F": 0.5, "J": 0.4, "J-Recall": 0.3, "F": 0.6}})
    [row] = read_table(davis, row_label=True)
    assert list(row) == ["", "J", "F", "J&F", "J-Recall"]
