"""BERT text encoding with sub-sentence attention masks (GroundingDINO style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BertConfig, BertModel, PreTrainedTokenizerBase

# Tokens that delimit sub-sentences: attention and position ids restart after each of them.
SUB_SENTENCE_DELIMITERS = ("[CLS]", "[SEP]", ".", "?")


@dataclass
class TokenizedText:
    """One tokenized expression (batch of 1, no padding)."""

    input_ids: torch.Tensor  # [1, L] int64
    token_type_ids: torch.Tensor  # [1, L] int64
    attention_mask: torch.Tensor  # [1, L] int64, all ones
    self_attention_mask: torch.Tensor  # [1, L, L] bool, True where token i may attend to j
    position_ids: torch.Tensor  # [1, L] int64, restarting at every sub-sentence


def build_bert(config: BertConfig) -> BertModel:
    """A randomly initialised ``BertModel`` (with pooler, as in the checkpoints), eager attention.

    Its weights come from the ReferDINO checkpoint (``bert.*``), never from the hub.
    """
    config = BertConfig.from_dict(config.to_dict())
    config._attn_implementation = "eager"
    return BertModel(config, add_pooling_layer=True)


def sub_sentence_masks(
    input_ids: torch.Tensor, delimiter_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-diagonal attention and restarting position ids between delimiter tokens.

    A delimiter closes the sub-sentence that follows the previous delimiter (it belongs to it);
    delimiters at the first or last position form a block of their own with position 0.

    Args:
        input_ids: [B, L] int64.
        delimiter_ids: token ids of :data:`SUB_SENTENCE_DELIMITERS`.

    Returns:
        (attention mask [B, L, L] bool, position ids [B, L] int64).
    """
    bs, num_token = input_ids.shape
    is_delimiter = torch.zeros((bs, num_token), dtype=torch.bool, device=input_ids.device)
    for token_id in delimiter_ids:
        is_delimiter |= input_ids == token_id
    mask = torch.eye(num_token, dtype=torch.bool, device=input_ids.device)
    mask = mask.unsqueeze(0).repeat(bs, 1, 1)
    position_ids = torch.zeros((bs, num_token), dtype=torch.long, device=input_ids.device)
    previous = 0
    for row, col in torch.nonzero(is_delimiter).tolist():
        if col in (0, num_token - 1):
            mask[row, col, col] = True
            position_ids[row, col] = 0
        else:
            mask[row, previous + 1 : col + 1, previous + 1 : col + 1] = True
            position_ids[row, previous + 1 : col + 1] = torch.arange(
                0, col - previous, device=input_ids.device
            )
        previous = col
    return mask, position_ids


def as_caption(expression: str) -> str:
    """The text BERT reads: the expression as written, "." appended when it does not end so."""
    return expression if expression.endswith(".") else expression + "."


def token_count(tokenizer: PreTrainedTokenizerBase, expression: str) -> int:
    """Tokens of ``expression`` as :func:`tokenize` encodes it, before any are dropped
    (``[CLS]`` and ``[SEP]`` included)."""
    return len(tokenizer(as_caption(expression))["input_ids"])


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    expression: str,
    max_text_len: int,
    device: torch.device,
) -> TokenizedText:
    """Tokenize one expression, ending it with "." if it does not already.

    Tokens beyond ``max_text_len`` are dropped (:func:`token_count` tells how many there are).
    """
    encoded = tokenizer([as_caption(expression)], padding="longest", return_tensors="pt")
    input_ids = encoded["input_ids"].to(device)
    delimiter_ids = tokenizer.convert_tokens_to_ids(list(SUB_SENTENCE_DELIMITERS))
    mask, position_ids = sub_sentence_masks(input_ids, delimiter_ids)
    n = max_text_len
    return TokenizedText(
        input_ids=input_ids[:, :n],
        token_type_ids=encoded["token_type_ids"].to(device)[:, :n],
        attention_mask=encoded["attention_mask"].to(device)[:, :n],
        self_attention_mask=mask[:, :n, :n],
        position_ids=position_ids[:, :n],
    )


def run_bert(bert: BertModel, tokens: TokenizedText, sub_sentence_present: bool) -> torch.Tensor:
    """Last hidden state of BERT: [1, L, hidden_size].

    With ``sub_sentence_present`` the attention is restricted to sub-sentences and positions
    restart in each (``tokens.self_attention_mask``, ``tokens.position_ids``); otherwise plain
    BERT over the whole expression.
    """
    if sub_sentence_present:
        allowed = tokens.self_attention_mask[:, None, :, :]
        position_ids = tokens.position_ids
    else:
        allowed = tokens.attention_mask[:, None, None, :].bool()
        position_ids = None
    embeddings = bert.embeddings(
        input_ids=tokens.input_ids,
        token_type_ids=tokens.token_type_ids,
        position_ids=position_ids,
    )
    dtype = embeddings.dtype
    additive = (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min
    return bert.encoder(embeddings, attention_mask=additive).last_hidden_state
