"""Real-size models with generated random weights, written as the released files are (no download).

Used by the benchmarks and by ``gpu_check.py``. Every model goes through the loaders the pipeline
uses for the released weights:

- ReferDINO ``mevis_swinb`` (Swin-B, BERT-base, 900 queries): a ``{"model_state_dict": ...}``
  checkpoint whose keys, shapes and dtypes are those of the released file (the manifest in
  ``tests/fixtures`` when present, else the architecture's own state dict, which
  ``tests/test_stage1_checkpoints.py`` proves equal to it), and a BERT-base tokenizer folder
  (``config.json`` + a generated ``vocab.txt`` of the same size as bert-base-uncased's), loaded
  with :func:`stage1_referdino.load_referdino`, strictly;
- SAM 2.1 ``t``/``s``/``b+``/``l`` at 1024 px: the installed ``sam2`` package's YAMLs,
  randomly initialised, saved in SAM 2's checkpoint format (``{"model": state_dict}``) and loaded
  with :func:`stage2_sam2_refine.build.build_sam2_predictor`.
- SAM 3's tracker at 1008 px: transformers' ``Sam3TrackerVideoConfig()`` (the tracker part of
  ``facebook/sam3``'s configuration), randomly initialised by transformers, saved as a transformers
  folder with the processor the released weights come with, and loaded with
  :func:`stage2_sam2_refine.sam3.build` (``stage2.tracker=sam3``).

The weights are random, so the outputs mean nothing; the sizes, and so the time and memory, are
those of the real models.
"""

from __future__ import annotations

import json
import logging
import math
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
# Keys, shapes and dtypes of the released ReferDINO checkpoints, made with the original code.
MANIFESTS = FIXTURES / "referdino_checkpoint_manifests.json"

REFERDINO_MODEL = "mevis_swinb"  # the configuration ReferDINO-Plus runs (configs/referdino/)
# SAM 2.1 models (stage2.model values) and the file names download_ckpts.sh gives their weights.
SAM2_CHECKPOINT_NAMES = {
    "sam2.1_hiera_t": "sam2.1_hiera_tiny.pt",
    "sam2.1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus.pt",
    "sam2.1_hiera_l": "sam2.1_hiera_large.pt",
}

# The generated BERT vocabulary: bert-base-uncased's size and special-token positions.
BERT_VOCAB_SIZE = 30522
BERT_SPECIAL_TOKENS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
BERT_UNUSED_TOKENS = 99  # [unused0] ... [unused98] between [PAD] and [UNK], as in BERT's
# Words put in the vocabulary whole (the benchmark sentences use them); everything else is split
# into generated pieces, down to single letters if need be.
COMMON_WORDS = " ".join(
    [
        "the a an of on in to and that who which is are first then left right away towards",
        "behind moving walking running jumping sitting standing turning flying cat dog bird man",
        "woman child kid boy girl person car ball cup table bed chair door floor red white black",
        "small big",
    ]
).split()
PUNCTUATION = list(".?,!'\"-:;()/")

# Scales of the generated weights (standard deviations), by what a tensor is.
NORM_SCALE_STD = 0.1  # 1-D ``weight`` of a normalisation layer: 1 + noise
BIAS_STD = 0.02  # biases, in_proj_bias
LAYER_SCALE_STD = 0.1  # gamma_v / gamma_l of the image-text fusion layers
RELATIVE_POSITION_STD = 0.02  # Swin relative position bias tables (Swin's own init)
LEVEL_EMBED_STD = 1.0  # feature-level embeddings (GroundingDINO's normal_ init)


@dataclass(frozen=True)
class ReferDINOFiles:
    """A written random-weight ReferDINO, ready for ``load_referdino(model, checkpoint,
    text_encoder=...)`` or ``stage1.model=... stage1.checkpoint=... stage1.text_encoder=...``.

    Attributes:
        model: the configuration name (``mevis_swinb``).
        checkpoint: ``{"model_state_dict": ...}`` file.
        text_encoder: folder with ``config.json`` and ``vocab.txt`` (BERT-base).
    """

    model: str
    checkpoint: Path
    text_encoder: Path

    def overrides(self) -> list[str]:
        """``key=value`` pipeline overrides selecting this model for stage 1."""
        return [
            f"stage1.model={self.model}",
            f"stage1.checkpoint={self.checkpoint}",
            f"stage1.text_encoder={self.text_encoder}",
        ]


def generated_vocabulary(size: int = BERT_VOCAB_SIZE, *, seed: int = 0) -> list[str]:
    """A WordPiece vocabulary of ``size`` entries: BERT's special tokens at their places,
    punctuation, letters and digits (alone and as ``##`` continuations), :data:`COMMON_WORDS`,
    then generated pieces (random letter strings, half of them continuations). Every lower-case
    English sentence tokenizes without ``[UNK]``."""
    rng = random.Random(seed)
    tokens = list(PUNCTUATION) + list(string.ascii_lowercase) + list(string.digits)
    tokens += [f"##{c}" for c in string.ascii_lowercase + string.digits]
    tokens = list(dict.fromkeys(tokens + COMMON_WORDS))  # once each, in this order
    unused = [f"[unused{i}]" for i in range(BERT_UNUSED_TOKENS)]
    seen = set(tokens) | set(BERT_SPECIAL_TOKENS.values())
    needed = size - len(BERT_SPECIAL_TOKENS) - len(unused) - len(tokens)
    while needed > 0:
        piece = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8)))
        piece = f"##{piece}" if rng.random() < 0.5 else piece
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            needed -= 1
    vocab: list[str] = []
    ordinary = iter(unused + tokens)
    for index in range(size):
        vocab.append(BERT_SPECIAL_TOKENS.get(index) or next(ordinary))
    return vocab


def write_text_encoder(folder: Path) -> Path:
    """Write a BERT-base tokenizer + config folder (``config.json``, ``vocab.txt``,
    ``tokenizer_config.json``) with a generated vocabulary; returns ``folder``."""
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    BertConfig(vocab_size=BERT_VOCAB_SIZE).save_pretrained(folder)  # defaults: bert-base
    (folder / "vocab.txt").write_text("\n".join(generated_vocabulary()) + "\n", encoding="utf-8")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    return folder


def read_manifest(model: str = REFERDINO_MODEL, path: Path = MANIFESTS) -> dict[str, list] | None:
    """``key -> [shape, dtype]`` of the released checkpoint of ``model``, or ``None`` when the
    fixtures are not there (an installed copy without its tests)."""
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get(model)


def random_weight(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A float32 tensor of ``shape`` for the state-dict entry ``key``, scaled for what it is:
    fan-in scaled normal for matrices and convolutions (``1 / sqrt(prod(shape[1:]))``), near 1
    for normalisation weights, small for biases (see the ``*_STD`` constants)."""
    name = key.rsplit(".", 1)[-1]
    noise = torch.randn(shape, generator=generator)
    if name in ("gamma_v", "gamma_l"):
        return noise * LAYER_SCALE_STD
    if name == "relative_position_bias_table":
        return noise * RELATIVE_POSITION_STD
    if name == "level_embed":
        return noise * LEVEL_EMBED_STD
    if len(shape) <= 1:
        if name == "weight":
            return 1.0 + noise * NORM_SCALE_STD
        return noise * BIAS_STD
    return noise / math.sqrt(math.prod(shape[1:]))


def referdino_state_dict(
    reference: Mapping[str, torch.Tensor],
    manifest: Mapping[str, list] | None,
    *,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random state dict with the released checkpoint's keys, shapes and dtypes.

    Args:
        reference: the state dict of the architecture built by our code (LoRA unmerged); its
            integer buffers (Swin's relative position indices, constants of the architecture)
            are copied.
        manifest: ``key -> [shape, dtype]`` of the released file; ``None``: ``reference``'s.
        seed: of the generated values.
    Raises:
        ValueError: the architecture and the manifest disagree (a key, shape or dtype).
    """
    built = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in reference.items()}
    if manifest is not None and built != dict(manifest):
        differ = sorted(set(built) ^ set(manifest)) or [k for k in built if built[k] != manifest[k]]
        raise ValueError(f"the built ReferDINO differs from the released manifest at {differ[:5]}")
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, (shape, dtype) in built.items():
        if dtype != "float32":
            state_dict[key] = reference[key].clone()
        else:
            state_dict[key] = random_weight(key, tuple(shape), generator)
    return state_dict


def write_referdino(
    folder: Path, *, model: str = REFERDINO_MODEL, seed: int = 0, manifest_path: Path = MANIFESTS
) -> ReferDINOFiles:
    """Write a random-weight ReferDINO checkpoint and BERT folder into ``folder``.

    The checkpoint is what a released one is (``model_state_dict``, LoRA factors unmerged), so
    loading it exercises the pipeline's strict loader.
    """
    from stage1_referdino import ReferDINOConfig, build_referdino, load_model_config
    from stage1_referdino.build import load_text_encoder

    folder.mkdir(parents=True, exist_ok=True)
    text_encoder = write_text_encoder(folder / "bert-base-generated")
    tokenizer, bert_config = load_text_encoder(text_encoder)
    values, _ = load_model_config(model)
    architecture = build_referdino(
        ReferDINOConfig.from_dict(values), tokenizer=tokenizer, bert_config=bert_config
    )
    state_dict = referdino_state_dict(
        architecture.state_dict(), read_manifest(model, manifest_path), seed=seed
    )
    del architecture
    checkpoint = folder / f"{model}_random.pth"
    torch.save({"model_state_dict": state_dict}, checkpoint)
    count = sum(v.numel() for v in state_dict.values())
    logger.info(
        "wrote %s: %d tensors, %.1f M values (random)", checkpoint, len(state_dict), count / 1e6
    )
    return ReferDINOFiles(model=model, checkpoint=checkpoint, text_encoder=text_encoder)


def write_sam2(folder: Path, model: str = "sam2.1_hiera_l", *, seed: int = 0) -> Path:
    """Write a random-weight SAM 2.1 checkpoint (``{"model": state_dict}``) for ``model`` (a name
    of :data:`SAM2_CHECKPOINT_NAMES`), from the installed sam2 package's YAML; returns its path.

    The weights are the modules' own initialisation, seeded.
    """
    from stage2_sam2_refine.build import instantiate_sam2

    if model not in SAM2_CHECKPOINT_NAMES:
        raise ValueError(f"unknown SAM 2.1 model {model!r}; known: {sorted(SAM2_CHECKPOINT_NAMES)}")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sam2 = instantiate_sam2(model)
    path = folder / SAM2_CHECKPOINT_NAMES[model]
    torch.save({"model": sam2.state_dict()}, path)
    count = sum(p.numel() for p in sam2.parameters())
    logger.info("wrote %s: %.1f M parameters (random)", path, count / 1e6)
    return path


def sam3_processor() -> Any:
    """SAM 3's processor as transformers' conversion of the released weights saves it (frames
    resized to 1008 px, normalised with mean and std 0.5)."""
    from transformers import Sam2VideoVideoProcessor, Sam3TrackerVideoProcessor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    video_processor = Sam2VideoVideoProcessor(
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], size={"height": 1008, "width": 1008}
    )
    return Sam3TrackerVideoProcessor(
        image_processor=Sam3ImageProcessor(), video_processor=video_processor
    )


def write_sam3(folder: Path, config: Any = None, *, seed: int = 0) -> Path:
    """Write a random-weight SAM 3 tracker as a transformers folder (``config.json``,
    ``model.safetensors``, ``processor_config.json``); returns ``folder``.

    Args:
        config: a ``Sam3TrackerVideoConfig``; ``None``: the released configuration's.
    """
    from transformers import Sam3TrackerVideoConfig, Sam3TrackerVideoModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Sam3TrackerVideoModel(config if config is not None else Sam3TrackerVideoConfig())
    model.save_pretrained(folder)
    sam3_processor().save_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    logger.info("wrote %s: %.1f M parameters (random)", folder, count / 1e6)
    return folder
