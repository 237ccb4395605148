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
