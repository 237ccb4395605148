"""One way to read a command line: flags and ``key=value`` overrides in any order, for the
pipeline, ``demo`` and ``app``."""

from __future__ import annotations

import argparse

import pytest

from referdino_plus import app_server, cli, demo
from referdino_plus.arguments import add_overrides_argument, parse_with_overrides
from referdino_plus.segmenter import DemoError


@pytest.mark.parametrize(
    "argv",
    [
        ["--stages", "2", "3", "data.root=d", "--cpu", "stage2.model=m"],
        ["data.root=d", "--stages", "2", "3", "stage2.model=m", "--cpu"],
        ["--cpu", "data.root=d", "stage2.model=m", "--stages", "2", "3"],
    ],
)
def test_pipeline_flags_and_overrides_in_any_order(argv):
    args = cli.parse_args(argv)
    assert args.stages == [2, 3] and args.cpu
    assert args.overrides == ["data.root=d", "stage2.model=m"]


def test_pipeline_overrides_after_a_flag_of_several_values():
    args = cli.parse_args(["--gids", "0", "1", "data.root=d", "--stages", "3", "name=x"])
    assert args.gids == [0, 1] and args.stages == [3]
    assert args.overrides == ["data.root=d", "name=x"]


def test_flags_short_for_overrides_come_last():
    args = cli.parse_args(["--name", "run", "--visualize", "a=1", "--overwrite", "b=2"])
    assert args.overwrite and args.overrides == ["a=1", "b=2", "name=run", "visualize.enabled=true"]
    assert cli.parse_args(["--name=run"]).overrides == ["name=run"]
    assert cli.parse_args([]).overrides == []


def test_the_pipeline_passes_other_words_to_hydra():
    """``~key`` (hydra's deletion) has no ``=``: the pipeline passes it on, before the others."""
    assert cli.parse_args(["a=1", "~stage1.top_k"]).overrides == ["~stage1.top_k", "a=1"]


@pytest.mark.parametrize("text_flag", [["--text", "a=b"], ["--te", "a=b"], ["--text=a=b"]])
def test_the_value_of_a_flag_of_one_value_is_not_an_override(text_flag):
    args = demo.parse_args(["x=1", "--video", "v=1.mp4", *text_flag, "--cpu", "y=2"])
    assert args.text == ["a=b"] and str(args.video) == "v=1.mp4"
    assert args.overrides == ["x=1", "y=2"]


def test_demo_and_app_refuse_other_words():
    with pytest.raises(DemoError, match="'stray': overrides are key=value, sentences go after"):
        demo.parse_args(["--video", "v.mp4", "--text", "a", "k=v", "stray"])
    with pytest.raises(DemoError, match="'stray': overrides are key=value$"):
        app_server.parse_args(["k=v", "stray", "--cpu"])
    args = app_server.parse_args(["--port", "8123", "app.host=0.0.0.0", "--gid", "1"])
    assert args.gid == 1 and args.overrides == ["app.host=0.0.0.0", "app.port=8123"]


def test_unknown_flags_are_still_refused():
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--count", type=int)
    add_overrides_argument(parser)
    assert parse_with_overrides(parser, ["k=v", "--count", "3"]).count == 3
    with pytest.raises(SystemExit):
        parse_with_overrides(parser, ["--colour", "k=v"])
