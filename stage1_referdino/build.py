"""Configuration, construction and checkpoint loading of ReferDINO.

A model configuration uses the vocabulary of the ``GroundingDINO`` block of ReferDINO's
``configs/*.yaml`` (plain values). It is given as a name of ``configs/referdino/<name>.yaml``, a
YAML path, or a dict.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerBase

from rvos.checkpoints import load_weights
from rvos.options import INT64_MAX, OptionError, autocast_to_dtype, bounded, check_declared
from rvos.weights import is_hub_reference, resolve_weights

from .model.lora import LoRALinear, merge_lora_
from .model.position_encoding import PositionEmbeddingSineHW
from .model.referdino import ReferDINO
from .model.segmentation import FPNSpatialDecoder
from .model.swin import SwinTransformer, swin_hyperparameters
from .model.text_encoder import build_bert
from .model.transformer import DeformableTransformerDecoderLayer, Transformer

logger = logging.getLogger(__name__)

# The named architectures: configs/referdino/ of the repository, linked into this package (and
# copied into a wheel).
CONFIG_DIR = Path(str(resources.files("stage1_referdino") / "configs"))
# The configuration every other one is read over (a key it leaves out takes this one's value).
BASE_CONFIG = "mevis_swinb"
# Where download_ckpts.sh puts the BERT tokenizer and config, relative to the working directory
# (as the checkpoint paths of configs/pipeline.yaml are).
CHECKPOINT_DIR = Path("checkpoints")
# Checkpoint entries that are not model state (profiler counters left in released files).
IGNORED_CHECKPOINT_SUFFIXES = ("total_params", "total_ops")
# Keys of ReferDINO's GroundingDINO block that only matter for training; accepted and unused.
TRAINING_ONLY_KEYS = frozenset(
    {
        "aux_loss",
        "backbone_freeze_keywords",
        "dn_bbox_coef",
        "dn_box_noise_scale",
        "dn_label_coef",
        "dn_label_noise_ratio",
        "dn_labelbook_size",
        "full_tune",
        "pretrained_path",
        "use_checkpoint",
        "use_transformer_ckpt",
    }
)
DOWNLOAD_HINT = "run `bash download_ckpts.sh` (see README) to fetch the released weights"
# What a BERT tokenizer + config folder needs (download_ckpts.sh bert also fetches the fast
# tokenizer's files, which can be rebuilt from these).
TEXT_ENCODER_FILES = ("config.json", "vocab.txt")
# The most layers (or Swin blocks) of one stack a configuration may ask for: far above the
# released models' (6 per transformer stack, 18 in a Swin stage); a slip such as 600000 would
# otherwise keep the checks building the architecture for minutes.
MAX_LAYERS = 100
# Swin stages: the pixel decoder and the transformer read all four (return_interm_indices).
SWIN_STAGES = 4
# Fetched with them from a hub folder when it has them (not its weights: they are in the checkpoint).
TEXT_ENCODER_EXTRAS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Mask decoder layers are built with the decoder layer's defaults in ReferDINO (not from the config).
MASK_DECODER_FFN_DIM = 1024
MASK_DECODER_ACTIVATION = "relu"


@dataclass
class SegHeadConfig:
    """``SegHead`` block: the deformable mask decoder."""

    SECTION = "SegHead"

    mask_dim: int = bounded(1)  # channels of the pixel decoder output
    n_heads: int = bounded(1)  # attention heads
    n_points: int = bounded(1)  # deformable sampling points per head
    dropout: float = bounded(0.0, 1.0)  # dropout (inactive at inference)
    n_layers: int = bounded(1, MAX_LAYERS)  # decoder layers
    use_self_attention: bool  # queries attend to each other (always on in ReferDINO)
    use_text_cross_attention: bool  # queries attend to the text

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class ReferDINOConfig:
    """Inference-relevant keys of ReferDINO's ``GroundingDINO`` config block (same names).

    The schema of ``configs/referdino/``: no defaults here, a configuration's values come from
    its file merged over :data:`BASE_CONFIG` (:func:`load_model_config`); OmegaConf checks them
    against these types (:meth:`from_dict`), and each number against its range (declared on the
    field, :func:`rvos.options.bounded`).
    """

    SECTION = ""  # errors name the keys as the YAML does

    backbone: Any  # Swin variant name, or a dict of its hyper-parameters (swin_hyperparameters)
    position_embedding: str  # image position embedding (only "sine")
    pe_temperatureH: float = bounded(1e-3)  # sine frequency base along the height
    pe_temperatureW: float = bounded(1e-3)  # sine frequency base along the width
    return_interm_indices: list[int]  # backbone stages returned (only [0, 1, 2, 3])
    enc_layers: int = bounded(1, MAX_LAYERS)  # encoder layers
    dec_layers: int = bounded(1, MAX_LAYERS)  # decoder layers
    pre_norm: bool  # pre-norm layers (unsupported, must be false)
    dim_feedforward: int = bounded(1)  # FFN width
    hidden_dim: int = bounded(2)  # transformer width (even, a multiple of nheads)
    dropout: float = bounded(0.0, 1.0)  # dropout (inactive at inference)
    nheads: int = bounded(1)  # attention heads
    num_queries: int = bounded(1)  # proposals selected for the decoder
    query_dim: int = bounded()  # box queries (must be 4)
    num_patterns: int = bounded()  # pattern embeddings (unsupported, must be 0)
    num_feature_levels: int = bounded()  # transformer feature levels (must be 4)
    enc_n_points: int = bounded(1)  # encoder deformable sampling points
    dec_n_points: int = bounded(1)  # decoder deformable sampling points
    two_stage_type: str  # query selection from the encoder (only "standard")
    two_stage_bbox_embed_share: bool  # proposal box head shared with the decoder's
    two_stage_class_embed_share: bool  # parameter-free either way
    transformer_activation: str  # FFN activation
    dec_pred_bbox_embed_share: bool  # one box head for all decoder layers
    embed_init_tgt: bool  # decoder content queries are learned embeddings
    max_text_len: int = bounded(2)  # tokens kept per expression ([CLS] and [SEP] included)
    text_encoder_type: str  # tokenizer + BERT config: name or folder
    use_text_enhancer: bool  # encoder text self-attention layers
    use_fusion_layer: bool  # encoder image-text fusion layers
    use_text_cross_attention: bool  # decoder text cross-attention
    text_dropout: float = bounded(0.0, 1.0)  # dropout (inactive at inference)
    fusion_dropout: float = bounded(0.0, 1.0)  # dropout (inactive at inference)
    fusion_droppath: float = bounded(0.0, 1.0)  # stochastic depth (inactive at inference)
    sub_sentence_present: bool  # BERT attention restricted to sub-sentences
    query_decay: float = bounded(1e-3, 1.0)  # decoder query pruning ratio per layer
    dec_lora: bool  # LoRA factors on the decoder
    enc_lora: bool  # LoRA factors on the encoder
    lora_rank: int = bounded(1)  # LoRA rank
    temporal_layer: int = bounded(0, MAX_LAYERS)  # temporal decoder blocks
    tracking_alpha: float = bounded(0.0, 1.0)  # query tracking memory update rate
    clip_len: int = bounded(1)  # frames per clip in inference (ReferDINO's crop_len)
    SegHead: SegHeadConfig  # mask decoder

    def __post_init__(self) -> None:
        check_declared(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ReferDINOConfig:
        """Check a complete GroundingDINO block (:func:`load_model_config`'s) against the schema.

        Training-only keys are dropped.

        Raises:
            ValueError: one line naming unknown or missing keys, a value of the wrong type, or a
                setting this port does not implement.
        """
        values = {k: v for k, v in values.items() if k not in TRAINING_ONLY_KEYS}
        check_keys(values, cls, "ReferDINO config")
        if isinstance(values["SegHead"], Mapping):
            check_keys(values["SegHead"], SegHeadConfig, "SegHead")
        try:
            config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))
        except OptionError as err:  # a value outside its range
            raise ValueError(f"ReferDINO config {err}") from None
        except OmegaConfBaseException as err:
            if isinstance(err.__cause__, OptionError):
                raise ValueError(f"ReferDINO config {err.__cause__}") from None
            reason = str(err.msg).splitlines()[0]
            raise ValueError(f"ReferDINO config {err.full_key}: {reason}") from err
        config.check_supported()
        return config

    @property
    def output_queries(self) -> int:
        """Queries the model returns per frame: ``num_queries``, of which each decoder layer
        keeps ``query_decay`` (rounded up); 15 for the released configurations."""
        kept = self.num_queries
        for _ in range(self.dec_layers):
            kept = math.ceil(kept * self.query_decay)
        return kept

    def check_supported(self) -> None:
        """Raise ``ValueError`` for settings this port does not implement."""
        unsupported = {
            "position_embedding": (self.position_embedding, "sine"),
            "return_interm_indices": (self.return_interm_indices, [0, 1, 2, 3]),
            "pre_norm": (self.pre_norm, False),
            "query_dim": (self.query_dim, 4),
            "num_patterns": (self.num_patterns, 0),
            "num_feature_levels": (self.num_feature_levels, 4),
            "two_stage_type": (self.two_stage_type, "standard"),
        }
        for key, (value, expected) in unsupported.items():
            if value != expected:
                raise ValueError(f"{key}={value!r} is not supported (expected {expected!r})")
        if not isinstance(self.backbone, str | Mapping):
            raise ValueError(
                f"backbone={self.backbone!r}: expected a Swin variant name or a dict of its "
                "hyper-parameters"
            )
        check_swin(swin_hyperparameters(self.backbone))
        # Attention splits the width evenly between heads; the sine embedding fills half the
        # width along each axis.
        for heads in ("nheads", "SegHead.n_heads"):
            count = self.nheads if heads == "nheads" else self.SegHead.n_heads
            if self.hidden_dim % count:
                raise ValueError(
                    f"hidden_dim={self.hidden_dim} is not a multiple of {heads}={count}"
                )
        if self.hidden_dim % 2:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be even")


def check_swin(params: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first Swin hyper-parameter (``backbone.<key>``) that no
    Swin transformer has: sizes are positive ints, ``depths`` and ``num_heads`` one per stage
    (:data:`SWIN_STAGES`), each stage's width (``embed_dim * 2**stage``) a multiple of its
    heads."""

    def count(value: Any, high: int | None = None) -> bool:
        return type(value) is int and 0 < value <= (high or INT64_MAX)

    for key in ("embed_dim", "window_size", "pretrain_img_size"):
        if not count(params[key]):
            raise ValueError(f"backbone.{key}={params[key]!r}: expected a positive int")
    for key, high in (("depths", MAX_LAYERS), ("num_heads", None)):
        value = params[key]
        if not (
            isinstance(value, list)
            and len(value) == SWIN_STAGES
            and all(count(v, high) for v in value)
        ):
            limit = f" (at most {high})" if high else ""
            raise ValueError(
                f"backbone.{key}={value!r}: expected {SWIN_STAGES} positive ints{limit}, one "
                "per Swin stage"
            )
    for stage, heads in enumerate(params["num_heads"]):
        width = params["embed_dim"] * 2**stage
        if width % heads:
            raise ValueError(
                f"backbone.num_heads[{stage}]={heads}: the stage is {width} wide "
                f"(embed_dim * 2**{stage}), not a multiple of its heads"
            )


def check_keys(values: Mapping[str, Any], schema: type, what: str) -> None:
    """Raise ``ValueError`` naming the keys of ``values`` the dataclass ``schema`` lacks, or its
    fields ``values`` lacks."""
    known = {f.name for f in fields(schema)}
    if unknown := set(values) - known:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")
    if missing := known - set(values):
        raise ValueError(f"missing {what} keys: {sorted(missing)}")


def read_yaml_block(path: Path) -> dict[str, Any]:
    """The mapping of a ReferDINO config YAML (an empty file: no keys)."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of GroundingDINO keys")
    return values


def merged(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``values`` over it; a mapping over a mapping is merged key by key."""
    out = dict(base)
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            value = merged(out[key], value)
        out[key] = value
    return out


def load_model_config(model_cfg: str | os.PathLike | Mapping[str, Any]) -> tuple[dict, Path]:
    """Read a model configuration, over :data:`BASE_CONFIG`.

    Args:
        model_cfg: a name in ``configs/referdino/`` (``"mevis_swinb"``), a YAML path, or a dict;
            each gives the keys where it differs from :data:`BASE_CONFIG` (or every key).

    Returns:
        (the GroundingDINO block as a dict: the base's keys, with ``model_cfg``'s over them; the
        folder relative paths resolve against: the YAML's folder, or the current directory for a
        dict).
    """
    base = read_yaml_block(CONFIG_DIR / f"{BASE_CONFIG}.yaml")
    if isinstance(model_cfg, Mapping):
        return merged(base, model_cfg), Path.cwd()
    path = Path(model_cfg)
    if path.suffix not in (".yaml", ".yml"):
        named = CONFIG_DIR / f"{model_cfg}.yaml"
        if not named.is_file():
            available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no ReferDINO config named {model_cfg!r}; known: {available}")
        path = named
    if not path.is_file():
        raise FileNotFoundError(f"ReferDINO config file not found: {path}")
    return merged(base, read_yaml_block(path)), path.resolve().parent


def resolve_text_encoder(text_encoder_type: str | os.PathLike, base_dir: Path) -> Path | str:
    """Where to read the BERT tokenizer and config from.

    A hub reference (``hf://<owner>/<repo>[@<revision>]/[<folder>/]``) is the folder it resolves
    to (:func:`rvos.weights.resolve_weights`: ``checkpoints/<repo name>`` when there, else its
    :data:`TEXT_ENCODER_FILES` in the Hugging Face cache, fetched and checked). Otherwise, in
    order: an existing absolute path; ``base_dir / text_encoder_type``;
    ``checkpoints/<text_encoder_type>`` under the working directory; otherwise the name itself
    (loaded from the local Hugging Face cache only, never downloaded).

    Raises:
        FileNotFoundError: an absolute path that is not a folder.
        rvos.weights.WeightsError: a hub reference that cannot be resolved (one line).
    """
    if is_hub_reference(text_encoder_type):
        return resolve_weights(
            text_encoder_type,
            folder_files=TEXT_ENCODER_FILES,
            optional_files=TEXT_ENCODER_EXTRAS,
        )
    candidate = Path(text_encoder_type).expanduser()
    if candidate.is_absolute():
        if not candidate.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {candidate}; {DOWNLOAD_HINT}")
        return candidate
    for folder in (base_dir / candidate, CHECKPOINT_DIR / candidate):
        if folder.is_dir():
            return folder
    return str(text_encoder_type)


def text_encoder_problem(source: Path | str) -> str | None:
    """Why a resolved text encoder (:func:`resolve_text_encoder`) cannot load, or ``None``.

    A folder must hold :data:`TEXT_ENCODER_FILES` (an interrupted ``download_ckpts.sh bert`` can
    leave it empty or partial); a bare name must be in the local Hugging Face cache.
    """
    if isinstance(source, Path):
        missing = [name for name in TEXT_ENCODER_FILES if not (source / name).is_file()]
        if missing:
            return (
                f"the BERT folder {source} is incomplete (missing {', '.join(missing)}): rerun "
                "`bash download_ckpts.sh bert`"
            )
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(source), "config.json")
    except (ImportError, ValueError):
        cached = None
    if not isinstance(cached, str):
        return (
            f"BERT tokenizer/config {str(source)!r} not found (looked next to the model YAML, in "
            f"{CHECKPOINT_DIR}/ and the local Hugging Face cache): name it by hub reference "
            "(hf://<owner>/<repo>/, fetched when needed) or run `bash download_ckpts.sh bert`"
        )
    return None


def load_text_encoder(source: Path | str) -> tuple[PreTrainedTokenizerBase, BertConfig]:
    """Tokenizer and BERT config from a folder or a locally cached hub name (no download).

    Raises:
        FileNotFoundError: an incomplete folder or an unknown name, saying to rerun
            ``download_ckpts.sh bert`` (:func:`text_encoder_problem`).
    """
    problem = text_encoder_problem(source)
    if problem is not None:
        raise FileNotFoundError(problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        bert_config = BertConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:  # ValueError: not a valid hub name either
        raise FileNotFoundError(
            f"BERT tokenizer/config {str(source)!r} not found locally "
            f"(looked in the config's folder and {CHECKPOINT_DIR}); {DOWNLOAD_HINT}"
        ) from err
    return tokenizer, bert_config


def build_referdino(
    config: ReferDINOConfig,
    *,
    tokenizer: PreTrainedTokenizerBase,
    bert_config: BertConfig,
    autocast_dtype: torch.dtype | None = None,
) -> ReferDINO:
    """Construct a randomly initialised ReferDINO (LoRA factors unmerged, ready for a checkpoint).

    Args:
        config: the architecture.
        tokenizer: BERT tokenizer (only its vocabulary matters for the weights' shapes: none).
        bert_config: BERT architecture (bert-base-uncased for the released checkpoints).
        autocast_dtype: CUDA mixed precision (None, torch.float16, torch.bfloat16).
    """
    hidden = config.hidden_dim
    backbone = SwinTransformer(**swin_hyperparameters(config.backbone))
    position_embedding = PositionEmbeddingSineHW(
        hidden // 2, config.pe_temperatureH, config.pe_temperatureW
    )
    transformer = Transformer(
        d_model=hidden,
        nhead=config.nheads,
        num_queries=config.num_queries,
        num_encoder_layers=config.enc_layers,
        num_decoder_layers=config.dec_layers,
        dim_feedforward=config.dim_feedforward,
        dropout=config.dropout,
        activation=config.transformer_activation,
        num_feature_levels=config.num_feature_levels,
        enc_n_points=config.enc_n_points,
        dec_n_points=config.dec_n_points,
        embed_init_tgt=config.embed_init_tgt,
        use_text_enhancer=config.use_text_enhancer,
        use_fusion_layer=config.use_fusion_layer,
        use_text_cross_attention=config.use_text_cross_attention,
        text_dropout=config.text_dropout,
        query_decay=config.query_decay,
    )
    seg = config.SegHead
    pixel_decoder = FPNSpatialDecoder(
        hidden, [hidden, hidden, backbone.num_features[0]], seg.mask_dim
    )
    mask_decoder = nn.ModuleList(
        DeformableTransformerDecoderLayer(
            hidden,
            d_ffn=MASK_DECODER_FFN_DIM,
            dropout=seg.dropout,
            activation=MASK_DECODER_ACTIVATION,
            n_levels=1,
            n_heads=seg.n_heads,
            n_points=seg.n_points,
            use_text_cross_attention=seg.use_text_cross_attention,
        )
        for _ in range(seg.n_layers)
    )
    return ReferDINO(
        backbone=backbone,
        position_embedding=position_embedding,
        transformer=transformer,
        bert=build_bert(bert_config),
        tokenizer=tokenizer,
        pixel_decoder=pixel_decoder,
        mask_decoder=mask_decoder,
        num_feature_levels=config.num_feature_levels,
        nheads=config.nheads,
        dec_pred_bbox_embed_share=config.dec_pred_bbox_embed_share,
        two_stage_bbox_embed_share=config.two_stage_bbox_embed_share,
        temporal_layer=config.temporal_layer,
        tracking_alpha=config.tracking_alpha,
        dropout=config.dropout,
        enc_lora=config.enc_lora,
        dec_lora=config.dec_lora,
        lora_rank=config.lora_rank,
        sub_sentence_present=config.sub_sentence_present,
        max_text_len=config.max_text_len,
        clip_len=config.clip_len,
        autocast_dtype=autocast_dtype,
    )


def read_checkpoint(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``model_state_dict`` of a ReferDINO checkpoint (``weights_only`` load, on CPU); a hub
    reference is resolved first (:func:`rvos.weights.resolve_weights`)."""
    path = resolve_weights(checkpoint)
    # memory-mapped: the tensors are only read once, when copied into the model
    content = load_weights(path, what="ReferDINO checkpoint", hint=DOWNLOAD_HINT, mmap=True)
    if not isinstance(content, dict) or "model_state_dict" not in content:
        raise ValueError(f"{path}: expected a dict with 'model_state_dict'")
    return content["model_state_dict"]


def state_dict_problems(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, named: int | None = None
) -> list[str]:
    """The missing, unexpected and mis-shaped keys of ``state_dict`` for ``model`` (ignorable
    profiler entries left out), one string per kind; ``named``: at most that many keys each."""
    state_dict = {
        k: v for k, v in state_dict.items() if not k.endswith(IGNORED_CHECKPOINT_SUFFIXES)
    }
    expected = model.state_dict()
    kinds = {
        "missing keys": sorted(set(expected) - set(state_dict)),
        "unexpected keys": sorted(set(state_dict) - set(expected)),
        "shape mismatches": sorted(
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state_dict and state_dict[k].shape != v.shape
        ),
    }
    return [
        f"{kind} ({len(keys)}): {keys[:named]}{' ...' if named and len(keys) > named else ''}"
        for kind, keys in kinds.items()
        if keys
    ]


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load every parameter and buffer, strictly; ignorable profiler entries are dropped.

    Raises:
        RuntimeError: listing missing, unexpected or mis-shaped keys.
    """
    problems = state_dict_problems(model, state_dict)
    if problems:
        raise RuntimeError("checkpoint does not match the ReferDINO config: " + "; ".join(problems))
    state_dict = {
        k: v for k, v in state_dict.items() if not k.endswith(IGNORED_CHECKPOINT_SUFFIXES)
    }
    model.load_state_dict(state_dict, strict=True)


# What building an architecture from a configuration that passed its checks can still raise
# (a constructor's own assertion on sizes, a size torch cannot hold).
_BUILD_ERRORS = (
    ValueError,
    TypeError,
    RuntimeError,
    AssertionError,
    OverflowError,
    ZeroDivisionError,
)
# Keys of each kind a message names (the count says how many more).
NAMED_KEYS = 3


def checkpoint_fit_problem(
    config: ReferDINOConfig, source: Path | str, checkpoint: str | os.PathLike
) -> str | None:
    """Why the checkpoint's weights do not fit the architecture ``config``, or ``None``, found
    without loading a model: it is built on PyTorch's ``meta`` device (shapes only, no memory,
    no weights), and its parameter names and shapes are compared with the checkpoint's
    (memory-mapped: only the file's index is read).

    Args:
        config: a checked configuration (:meth:`ReferDINOConfig.from_dict`).
        source: the tokenizer and BERT config (:func:`resolve_text_encoder`), known to exist.
        checkpoint: a ReferDINO checkpoint, known to be one.
    """
    tokenizer, bert_config = load_text_encoder(source)
    try:
        # Only shapes: what a constructor warns about values (e.g. empty tensors) is for the
        # build that loads the weights to say.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_referdino(config, tokenizer=tokenizer, bert_config=bert_config)
    except _BUILD_ERRORS as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        return f"the architecture cannot be built ({reason})"
    problems = state_dict_problems(model, read_checkpoint(checkpoint), named=NAMED_KEYS)
    if problems:
        return "the checkpoint's weights do not fit the architecture: " + "; ".join(problems)
    return None


def load_referdino(
    model_cfg: str | os.PathLike | Mapping[str, Any],
    checkpoint: str | os.PathLike,
    text_encoder: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    autocast: str | torch.dtype | None = None,
) -> ReferDINO:
    """Build ReferDINO, load a released checkpoint strictly, merge LoRA, move, set eval.

    Args:
        model_cfg: config name in ``configs/referdino/``, YAML path, or dict.
        checkpoint: file with ``{"model_state_dict": ...}``, or its hub reference
            (``hf://<owner>/<repo>[@<revision>]/<path>``).
        text_encoder: tokenizer + BERT config folder, its hub reference (``hf://.../``), or a
            cached hub name; overrides the config's ``text_encoder_type``.
        device: where to run.
        autocast: mixed precision on CUDA ("float16", "bfloat16" or None); CPU stays float32.

    Raises:
        FileNotFoundError: missing config, checkpoint or text encoder files.
        rvos.weights.WeightsError: a hub reference that cannot be resolved (offline and not
            cached, gated, a checksum mismatch, unknown).
        RuntimeError: the checkpoint's keys or shapes differ from the architecture.
    """
    values, base_dir = load_model_config(model_cfg)
    config = ReferDINOConfig.from_dict(values)
    source = text_encoder if text_encoder is not None else config.text_encoder_type
    tokenizer, bert_config = load_text_encoder(resolve_text_encoder(source, base_dir))
    state_dict = read_checkpoint(checkpoint)
    model = build_referdino(
        config,
        tokenizer=tokenizer,
        bert_config=bert_config,
        autocast_dtype=autocast_to_dtype(autocast),
    )
    load_state_dict_strict(model, state_dict)
    merged = merge_lora_(model)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise RuntimeError("LoRA layers left unmerged")
    logger.info("loaded ReferDINO from %s (%d LoRA layers merged)", checkpoint, merged)
    return model.to(device).eval()
