"""Expressions reach BERT as ReferDINO feeds them: the raw text, "." appended when missing."""

import json

import pytest
import torch

from rvos.mevis import MevisSplit
from stage1_referdino.build import load_text_encoder
from stage1_referdino.model.text_encoder import tokenize


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    tokenizer, _ = load_text_encoder(fixtures_dir / "referdino_tiny" / "text_encoder")
    return tokenizer


def original_token_ids(tokenizer, caption: str) -> list[int]:
    """ReferDINO's ``GroundingDINO.infer`` text handling: the caption as given, "." appended
    when it does not end with one, then the BERT tokenizer."""
    caption = caption if caption.endswith(".") else caption + "."
    return tokenizer([caption], padding="longest", return_tensors="pt")["input_ids"][0].tolist()


@pytest.mark.parametrize(
    "text",
    [
        "the bird flying away. ",  # the original appends a second "." after the space
        "the  bird   flying away",  # inner runs of spaces
        "\tthe bird flying away.\n",
    ],
)
def test_split_expressions_tokenize_as_the_original(tmp_path, tokenizer, text, make_split):
    root = make_split(tmp_path, {"v": {"frames": ["00000"], "expressions": {"0": text}}})
    read = MevisSplit(root).videos["v"].expressions["0"].text
    assert read == text  # as written in meta_expressions.json
    ours = tokenize(tokenizer, read, max_text_len=256, device=torch.device("cpu"))
    assert ours.input_ids[0].tolist() == original_token_ids(tokenizer, text)


def test_trailing_space_after_period_changes_the_tokens(tokenizer):
    """Why the text is not normalised: "x. " and "x." are different BERT inputs."""
    raw = original_token_ids(tokenizer, "the bird flying away. ")
    normalised = original_token_ids(tokenizer, "the bird flying away.")
    dot = tokenizer.convert_tokens_to_ids(".")
    assert raw.count(dot) == 2 and normalised.count(dot) == 1


def test_blank_expressions_are_still_refused(tmp_path, make_split):
    from rvos.mevis import DataError

    root = make_split(tmp_path, {"v": {"frames": ["00000"], "expressions": {"0": "x"}}})
    meta = json.loads((root / "meta_expressions.json").read_text())
    meta["videos"]["v"]["expressions"]["0"]["exp"] = " \t "
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="empty"):
        MevisSplit(root)


def test_a_sentence_longer_than_the_text_encoder_warns_once_with_the_tokens_dropped(
    tokenizer, caplog
):
    from types import SimpleNamespace

    from stage1_referdino.model.text_encoder import token_count
    from stage1_referdino.runner import warn_dropped_tokens

    model = SimpleNamespace(tokenizer=tokenizer, max_text_len=256)
    long = " ".join(["the dog that runs to the left"] * 60)
    sentences = {"0": "a cat", "3": long}
    count = token_count(tokenizer, long)
    assert count > 256
    ids = tokenize(tokenizer, long, max_text_len=256, device=torch.device("cpu")).input_ids
    assert ids.shape[1] == 256  # what the model reads

    with caplog.at_level("WARNING"):
        dropped = warn_dropped_tokens(model, sentences, lambda e: f"video 'v', expression {e!r}")
    assert dropped == {"3": count - 256}
    (record,) = [r for r in caplog.records if "dropped" in r.getMessage()]
    message = record.getMessage()
    assert "video 'v', expression '3'" in message
    assert f"{count} tokens" in message and f"last {count - 256} token(s) are dropped" in message


def test_the_pipeline_names_the_video_and_expression_once(
    tmp_path, monkeypatch, make_split, make_stage1, tokenizer, caplog
):
    """Once per expression of a video, even when stage 1 retries the video after running out of
    memory."""
    from types import SimpleNamespace

    from referdino_plus.config import load_config
    from referdino_plus.pipeline import stage_fingerprints, stage_job
    from rvos.options import CacheDevice
    from stage1_referdino import runner

    long = " ".join(["the dog that runs to the left"] * 60)
    videos = {"v": {"frames": ["00000"], "expressions": {"0": "a cat", "7": long}}}
    root = make_split(tmp_path / "split", videos)
    cfg = load_config([f"data.root={root}", f"work_dir={tmp_path / 'work'}"])
    job = stage_job(cfg, stage_fingerprints(cfg), 1)

    def fake_record(model, images, sentences, options, **kwargs):
        if options.feature_cache_device != CacheDevice.cpu:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return make_stage1()

    model = SimpleNamespace(tokenizer=tokenizer, max_text_len=256)
    monkeypatch.setattr(runner, "build_stage1_model", lambda options, device: model)
    monkeypatch.setattr(runner, "stage1_record", fake_record)
    with caplog.at_level("WARNING"):
        runner.build_video_processor(job, "cpu")("v")
    warned = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("video 'v', expression '7': ")
