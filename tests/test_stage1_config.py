"""ReferDINO configuration handling: names, paths, dicts, text encoder resolution, autocast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from stage1_referdino import ReferDINOConfig, load_model_config, load_referdino, preprocess
from stage1_referdino.build import CHECKPOINT_DIR, CONFIG_DIR, resolve_text_encoder

TINY = "referdino_tiny"


def test_named_config_resolves_to_project_folder() -> None:
    values, base_dir = load_model_config("mevis_swinb")
    assert base_dir == CONFIG_DIR.resolve()
    config = ReferDINOConfig.from_dict(values)
    assert config.backbone == "swin_B_384_22k"
    assert (config.num_queries, config.query_decay, config.lora_rank) == (900, 0.5, 32)
    assert config.SegHead.n_points == 16


def test_unknown_config_name_lists_known_ones() -> None:
    with pytest.raises(FileNotFoundError, match="mevis_swinb"):
        load_model_config("no_such_model")


def test_unknown_key_is_rejected() -> None:
    values, _ = load_model_config("mevis_swinb")
    with pytest.raises(ValueError, match="num_querys"):
        ReferDINOConfig.from_dict({**values, "num_querys": 10})


def test_training_only_keys_are_accepted(fixtures_dir: Path) -> None:
    values, _ = load_model_config(fixtures_dir / TINY / "model.yaml")
    assert "dn_labelbook_size" in values
    assert ReferDINOConfig.from_dict(values).num_queries == 20


def test_bert_name_resolves_to_checkpoints_folder(tmp_path: Path, monkeypatch) -> None:
    # not next to the config: checkpoints/<name> under the working directory, else the bare name
    config_dir, work = tmp_path / "configs", tmp_path / "work"
    config_dir.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    assert resolve_text_encoder("bert-base-uncased", config_dir) == "bert-base-uncased"
    (work / CHECKPOINT_DIR / "bert-base-uncased").mkdir(parents=True)
    assert resolve_text_encoder("bert-base-uncased", config_dir) == (
        CHECKPOINT_DIR / "bert-base-uncased"
    )
    (config_dir / "bert-base-uncased").mkdir()
    assert resolve_text_encoder("bert-base-uncased", config_dir) == config_dir / "bert-base-uncased"


def test_yaml_copy_resolves_text_encoder_next_to_it(fixtures_dir: Path, tmp_path: Path) -> None:
    tiny = fixtures_dir / TINY
    with open(tiny / "model.yaml", encoding="utf-8") as f:
        values = yaml.safe_load(f)
    values["text_encoder_type"] = "absent_folder"
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="download_ckpts.sh"):
        load_referdino(path, tiny / "referdino_checkpoint.pth")
    # an explicit text_encoder overrides the YAML's
    model = load_referdino(
        path, tiny / "referdino_checkpoint.pth", text_encoder=tiny / "text_encoder"
    )
    assert model.tokenizer.convert_tokens_to_ids("[CLS]") == 12


def test_dict_config_and_cpu_ignores_autocast(fixtures_dir: Path) -> None:
    tiny = fixtures_dir / TINY
    values, _ = load_model_config(tiny / "model.yaml")
    checkpoint = tiny / "referdino_checkpoint.pth"
    text_encoder = tiny / "text_encoder"
    plain = load_referdino(values, checkpoint, text_encoder=text_encoder)
    mixed = load_referdino(values, checkpoint, text_encoder=text_encoder, autocast="bfloat16")
    assert mixed.autocast_dtype == torch.bfloat16
    with open(tiny / "fixture.json", encoding="utf-8") as f:
        meta = json.load(f)
    frames = [Image.open(tiny / "frames" / f"{n}.jpg") for n in meta["frame_names"][:3]]
    video = preprocess(frames, short_side=meta["short_side"])
    a = plain.infer(video, "the child")
    b = mixed.infer(video, "the child")
    for key in a:
        assert a[key].dtype == torch.float32
        assert torch.equal(a[key], b[key]), key
