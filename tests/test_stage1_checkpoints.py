"""Released ReferDINO checkpoints load strictly into our port (manifests of the original code)."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from stage1_referdino import (
    ReferDINOConfig,
    build_referdino,
    load_model_config,
    load_referdino,
    load_state_dict_strict,
    read_checkpoint,
)
from stage1_referdino.build import CONFIG_DIR

pytestmark = pytest.mark.slow  # loads the fixture models

MANIFESTS = "referdino_checkpoint_manifests.json"
TINY = "referdino_tiny"


def _manifests(fixtures_dir: Path) -> dict[str, dict[str, list]]:
    with open(fixtures_dir / MANIFESTS, encoding="utf-8") as f:
        return json.load(f)


def _bert_config(fixtures_dir: Path, manifest: dict[str, list]) -> BertConfig:
    """The fixture's BERT config if it matches the manifest's shapes, else bert-base-uncased."""
    tiny = BertConfig.from_pretrained(fixtures_dir / TINY / "text_encoder")
    shape = manifest["bert.embeddings.word_embeddings.weight"][0]
    if shape == [tiny.vocab_size, tiny.hidden_size]:
        return tiny
    return BertConfig()  # the defaults are bert-base-uncased


def _state_dict_from_manifest(manifest: dict[str, list]) -> dict[str, torch.Tensor]:
    """Zero tensors with exactly the manifest's keys, shapes and dtypes.

    They are views of one zero buffer per dtype, so the saved file stays small (torch.save
    stores a shared storage once).
    """
    sizes: dict[str, int] = {}
    for shape, dtype in manifest.values():
        sizes[dtype] = max(sizes.get(dtype, 0), math.prod(shape))
    buffers = {dtype: torch.zeros(n, dtype=getattr(torch, dtype)) for dtype, n in sizes.items()}
    return {
        key: buffers[dtype][: math.prod(shape)].view(shape)
        for key, (shape, dtype) in manifest.items()
    }


def _build(fixtures_dir: Path, name: str, manifest: dict[str, list]):
    values, _ = load_model_config(name)
    # No weight depends on the vocabulary file: the fixture's tokenizer stands in for BERT's.
    tokenizer = AutoTokenizer.from_pretrained(fixtures_dir / TINY / "text_encoder")
    return build_referdino(
        ReferDINOConfig.from_dict(values),
        tokenizer=tokenizer,
        bert_config=_bert_config(fixtures_dir, manifest),
    )


def _config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


# Configurations whose released key lists are recorded in the fixtures.
MANIFEST_CONFIGS = ["a2d_swint", "mevis_swinb", "mevis_swint", "ytvos_swinb"]


def test_every_manifest_is_tested(fixtures_dir: Path) -> None:
    assert sorted(_manifests(fixtures_dir)) == MANIFEST_CONFIGS
    assert set(MANIFEST_CONFIGS) <= set(_config_names())


@pytest.mark.parametrize("name", MANIFEST_CONFIGS)
def test_released_checkpoint_loads_strictly(fixtures_dir: Path, tmp_path: Path, name: str) -> None:
    manifest = _manifests(fixtures_dir)[name]
    model = _build(fixtures_dir, name, manifest)
    built = {
        key: [list(value.shape), str(value.dtype).removeprefix("torch.")]
        for key, value in model.state_dict().items()
    }
    assert built == manifest

    path = tmp_path / f"{name}.pth"
    state_dict = _state_dict_from_manifest(manifest)
    state_dict["transformer.total_params"] = torch.zeros(1)  # profiler leftovers are ignored
    state_dict["backbone.0.total_ops"] = torch.zeros(1)
    torch.save({"model_state_dict": state_dict}, path)
    del state_dict
    load_state_dict_strict(model, read_checkpoint(path))
    del model
    gc.collect()


# Swin's channel width of each backbone variant the named configs use (Swin-T: 96, Swin-B: 128).
SWIN_WIDTH = {"swint": 96, "swinb": 128}


@pytest.mark.parametrize("name", _config_names())
def test_every_config_builds(fixtures_dir: Path, name: str) -> None:
    """Every named architecture builds at its real size, on the meta device (shapes only), with
    what its config says: backbone width, temporal decoder depth, encoder LoRA, queries."""
    config = ReferDINOConfig.from_dict(load_model_config(name)[0])
    tokenizer = AutoTokenizer.from_pretrained(fixtures_dir / TINY / "text_encoder")
    with torch.device("meta"):
        model = build_referdino(config, tokenizer=tokenizer, bert_config=BertConfig())
    state = model.state_dict()
    assert state["backbone.0.patch_embed.proj.weight"].shape[0] == SWIN_WIDTH[name[-5:]]
    assert len(model.temporal_decoder[-1].layer) == config.temporal_layer
    encoder_lora = [k for k in state if k.startswith("transformer.encoder.") and "lora_A" in k]
    assert bool(encoder_lora) == config.enc_lora
    assert state["transformer.tgt_embed.weight"].shape == (config.num_queries, config.hidden_dim)


@pytest.fixture(scope="module")
def a2d_swint(fixtures_dir: Path):
    manifest = _manifests(fixtures_dir)["a2d_swint"]
    return _build(fixtures_dir, "a2d_swint", manifest), manifest


def test_missing_key_is_named(a2d_swint) -> None:
    model, manifest = a2d_swint
    state_dict = _state_dict_from_manifest(manifest)
    del state_dict["transformer.decoder.layers.0.linear1.lora_A"]
    with pytest.raises(
        RuntimeError,
        match=r"missing keys.*transformer\.decoder\.layers\.0\."
        r"linear1\.lora_A",
    ):
        load_state_dict_strict(model, state_dict)


def test_unexpected_key_is_named(a2d_swint) -> None:
    model, manifest = a2d_swint
    state_dict = _state_dict_from_manifest(manifest)
    # a2d_swint has no encoder LoRA: an encoder LoRA factor is an unexpected key
    state_dict["transformer.encoder.layers.0.linear1.lora_A"] = torch.zeros(32, 256)
    with pytest.raises(
        RuntimeError,
        match=r"unexpected keys.*transformer\.encoder\.layers\.0\."
        r"linear1\.lora_A",
    ):
        load_state_dict_strict(model, state_dict)


def test_shape_mismatch_is_named(a2d_swint) -> None:
    model, manifest = a2d_swint
    state_dict = _state_dict_from_manifest(manifest)
    state_dict["transformer.tgt_embed.weight"] = torch.zeros(300, 256)
    with pytest.raises(RuntimeError, match=r"transformer\.tgt_embed\.weight"):
        load_state_dict_strict(model, state_dict)


def test_missing_checkpoint_names_download_script(fixtures_dir: Path, tmp_path: Path) -> None:
    tiny = fixtures_dir / TINY
    with pytest.raises(FileNotFoundError, match="download_ckpts.sh"):
        load_referdino(tiny / "model.yaml", tmp_path / "absent.pth")


def test_lora_is_merged_once(fixtures_dir: Path) -> None:
    tiny = fixtures_dir / TINY
    model = load_referdino(tiny / "model.yaml", tiny / "referdino_checkpoint.pth")
    assert not [n for n, _ in model.named_parameters() if "lora" in n]
    raw = read_checkpoint(tiny / "referdino_checkpoint.pth")
    prefix = "transformer.decoder.layers.0.linear1"
    rank = raw[f"{prefix}.lora_A"].shape[0]
    merged = raw[f"{prefix}.weight"] + (raw[f"{prefix}.lora_B"] @ raw[f"{prefix}.lora_A"]) / rank
    assert torch.equal(model.state_dict()[f"{prefix}.weight"], merged)
    # the shared query-position head is merged once, under both of its names
    shared = "ref_point_head.layers.0.weight"
    state = model.state_dict()
    assert state[shared].data_ptr() == state[f"transformer.decoder.{shared}"].data_ptr()
    expected = (
        raw[f"transformer.decoder.{shared}"]
        + (raw["ref_point_head.layers.0.lora_B"] @ raw["ref_point_head.layers.0.lora_A"]) / rank
    )
    assert torch.equal(model.state_dict()[shared], expected)
    assert not model.training
