"""ReferDINO configuration handling: names, paths, dicts, text encoder resolution, autocast."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from rvos.options import Autocast, autocast_to_dtype
from stage1_referdino import ReferDINOConfig, load_model_config, load_referdino, preprocess
from stage1_referdino.build import CHECKPOINT_DIR, CONFIG_DIR, SegHeadConfig, resolve_text_encoder

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


# The named architectures, from ReferDINO's configs/*.yaml: mevis_swinb's values ...
MEVIS_SWINB = {
    "backbone": "swin_B_384_22k",
    "position_embedding": "sine",
    "pe_temperatureH": 20,
    "pe_temperatureW": 20,
    "return_interm_indices": [0, 1, 2, 3],
    "enc_layers": 6,
    "dec_layers": 6,
    "pre_norm": False,
    "dim_feedforward": 2048,
    "hidden_dim": 256,
    "dropout": 0.0,
    "nheads": 8,
    "num_queries": 900,
    "query_dim": 4,
    "num_patterns": 0,
    "num_feature_levels": 4,
    "enc_n_points": 4,
    "dec_n_points": 4,
    "two_stage_type": "standard",
    "two_stage_bbox_embed_share": False,
    "two_stage_class_embed_share": False,
    "transformer_activation": "relu",
    "dec_pred_bbox_embed_share": True,
    "embed_init_tgt": True,
    "max_text_len": 256,
    "text_encoder_type": "hf://google-bert/bert-base-uncased/",  # ReferDINO's: bert-base-uncased
    "use_text_enhancer": True,
    "use_fusion_layer": True,
    "use_text_cross_attention": True,
    "text_dropout": 0.0,
    "fusion_dropout": 0.0,
    "fusion_droppath": 0.1,
    "sub_sentence_present": True,
    "query_decay": 0.5,
    "dec_lora": True,
    "enc_lora": True,
    "lora_rank": 32,
    "temporal_layer": 3,
    "tracking_alpha": 0.1,
    "clip_len": 36,
    "SegHead": {
        "mask_dim": 256,
        "n_heads": 8,
        "n_points": 16,
        "dropout": 0.0,
        "n_layers": 3,
        "use_self_attention": True,
        "use_text_cross_attention": True,
    },
}
# ... and where each one differs from them.
SWIN_T = {"backbone": "swin_T_224_1k"}
DIFFERENCES = {
    "a2d_swinb": {"temporal_layer": 1},
    "a2d_swint": {**SWIN_T, "enc_lora": False, "temporal_layer": 1},
    "coco_swinb": {},
    "coco_swint": SWIN_T,
    "davis_swinb": {},
    "davis_swint": SWIN_T,
    "jhmdb_swinb": {},
    "jhmdb_swint": SWIN_T,
    "mevis_swinb": {},
    "mevis_swint": SWIN_T,
    "ytvos_swinb": {},
    "ytvos_swint": SWIN_T,
}


def test_every_named_config_is_listed() -> None:
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(DIFFERENCES)


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_named_config_resolves_to_its_architecture(name: str) -> None:
    config = ReferDINOConfig.from_dict(load_model_config(name)[0])
    assert dataclasses.asdict(config) == {**MEVIS_SWINB, **DIFFERENCES[name]}
    assert isinstance(config.SegHead, SegHeadConfig)


def test_a_partial_yaml_or_dict_takes_the_base_values(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("num_queries: 300\nSegHead: {n_layers: 2}\n", encoding="utf-8")
    values, base_dir = load_model_config(path)
    assert base_dir == tmp_path
    expected = {**MEVIS_SWINB, "num_queries": 300}
    expected["SegHead"] = {**MEVIS_SWINB["SegHead"], "n_layers": 2}
    assert dataclasses.asdict(ReferDINOConfig.from_dict(values)) == expected
    from_dict = load_model_config({"num_queries": 300, "SegHead": {"n_layers": 2}})[0]
    assert dataclasses.asdict(ReferDINOConfig.from_dict(from_dict)) == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SegHead": {"n_layer": 2}}, r"^unknown SegHead keys: \['n_layer'\]$"),
        ({"num_queries": "many"}, r"^ReferDINO config num_queries: Value 'many' .* Integer$"),
        ({"SegHead": {"n_points": "x"}}, r"^ReferDINO config SegHead.n_points: Value 'x'"),
        ({"pre_norm": True}, r"^pre_norm=True is not supported \(expected False\)$"),
        ({"return_interm_indices": [1, 2, 3]}, r"^return_interm_indices=\[1, 2, 3\] is not"),
    ],
)
def test_bad_values_fail_in_one_line(change: dict, message: str) -> None:
    values = load_model_config(change)[0]
    with pytest.raises(ValueError, match=message):
        ReferDINOConfig.from_dict(values)


def test_an_incomplete_block_names_the_missing_keys() -> None:
    values = load_model_config("mevis_swinb")[0]
    del values["clip_len"]
    with pytest.raises(ValueError, match=r"^missing ReferDINO config keys: \['clip_len'\]$"):
        ReferDINOConfig.from_dict(values)


def test_autocast_names_map_to_dtypes() -> None:
    assert [autocast_to_dtype(v) for v in (Autocast.float16, "BFloat16", "none", None)] == [
        torch.float16,
        torch.bfloat16,
        None,
        None,
    ]
    assert autocast_to_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match=r"one of \['bfloat16', 'float16', 'none'\], got 'int8'"):
        autocast_to_dtype("int8")
