"""Stage-1 mask post-processing: from ReferDINO's mask logits to a record's run-length masks.

A record keeps ``interpolate(mask_logits, frame_size, bilinear) > 0``
(:func:`rvos.masks.threshold_mask_logits`), run-length encoded, a few frames at a time. The masks
are upsampled, thresholded and encoded where the logits are: on a GPU only the run boundaries
come back to the host (:meth:`~rvos.masks.RunLengthMasks.encode_tensor`); on the CPU the same
torch code runs there (faster than upsampling in torch and encoding in numpy, and the same runs:
``tests/test_stage1_postprocess.py``). If the device runs out of memory for the full-size masks,
they are made on the host instead, with a warning.

The masks themselves can differ between devices only where an upsampled logit is within float
rounding of 0 (a GPU's bilinear kernel may round a weighted sum differently from the CPU's).

The records are assembled by the data layer (:mod:`rvos.proposals`: which queries a record keeps,
the answer rules); ReferDINO-Plus legacy files are turned into records there too, from
:func:`rvos.masks.encode_mask_logits`, without this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from rvos.intermediates import ExpressionProposals
from rvos.masks import RunLengthMasks, encode_mask_logits, threshold_mask_logits
from rvos.proposals import THRESHOLD_OR_TOP1, get_answer_rule, kept_query_ids

logger = logging.getLogger(__name__)


def proposals_from_outputs(
    scores: np.ndarray,
    boxes: np.ndarray,
    mask_logits,
    frame_size: tuple[int, int],
    *,
    top_k: int | None,
    obj_threshold: float,
    answer: str = THRESHOLD_OR_TOP1,
    frames_per_chunk: int = 8,
) -> ExpressionProposals:
    """Build one expression's stage-1 record from the model outputs.

    The kept queries' masks and the answer's union are made from the same upsampled frames,
    where ``mask_logits`` are (see the module docstring).

    Args:
        scores: ``[T, N] float32`` sigmoid scores.
        boxes: ``[T, N, 4] float32`` normalised ``(cx, cy, w, h)``.
        mask_logits: ``[T, N, h, w]`` mask logits (numpy array, or torch tensor on any device).
        frame_size: ``(H, W)`` original frame size.
        top_k: queries kept in the record (``None``: all); see
            :func:`rvos.proposals.kept_query_ids`.
        obj_threshold: threshold of the stage-1 answer rule.
        answer: the answer rule's name (:data:`rvos.proposals.ANSWER_RULES`); the answer is the
            union of the chosen queries' masks (a rule with ``annotator_argmax`` is finished per
            video by :func:`rvos.proposals.apply_annotator_argmax`).
        frames_per_chunk: frames upsampled and encoded at a time (bounds memory).
    """
    kept = kept_query_ids(scores, top_k)
    chosen = get_answer_rule(answer).select(scores, obj_threshold)
    needed = np.union1d(kept, chosen)
    column = {int(q): i for i, q in enumerate(needed)}
    kept_cols = [column[int(q)] for q in kept]
    answer_cols = [column[int(q)] for q in chosen]

    def encode(logits: torch.Tensor) -> tuple[RunLengthMasks, RunLengthMasks]:
        return _encode_kept_and_answer(
            logits, needed, kept_cols, answer_cols, frame_size, frames_per_chunk
        )

    masks, answer_masks = _on_device_or_host(encode, mask_logits, frame_size, frames_per_chunk)
    return ExpressionProposals(
        scores=np.ascontiguousarray(np.asarray(scores)[:, kept], dtype=np.float32),
        boxes=np.ascontiguousarray(np.asarray(boxes)[:, kept], dtype=np.float32),
        masks=masks,
        query_ids=kept,
        answer=answer_masks,
    )


def query_masks(
    mask_logits, frame_size: tuple[int, int], *, frames_per_chunk: int = 8
) -> RunLengthMasks:
    """``[T, N, H, W]`` masks of every query, encoded as :func:`proposals_from_outputs` encodes a
    record's (the same runs), for :func:`rvos.proposals.proposals_from_query_masks`.

    Args:
        mask_logits: ``[T, N, h, w]`` mask logits (numpy array, or torch tensor on any device).
        frame_size: ``(H, W)``.
    """

    def encode(logits: torch.Tensor) -> RunLengthMasks:
        return encode_mask_logits(logits, frame_size, chunk=frames_per_chunk)

    return _on_device_or_host(encode, mask_logits, frame_size, frames_per_chunk)


def _on_device_or_host(encode: Callable, mask_logits, frame_size, frames_per_chunk: int):
    """``encode(logits)`` where ``mask_logits`` are; if that device runs out of memory, again on
    the host (with a warning: the model itself fitted, only the full-size masks did not)."""
    logits = torch.as_tensor(mask_logits)
    try:
        return encode(logits)
    except torch.OutOfMemoryError:
        pass  # outside the handler, so that the failed attempt's tensors can be freed
    logger.warning(
        "out of memory upsampling %d frames of masks to %s on %s; making them on the host",
        frames_per_chunk,
        "x".join(map(str, frame_size[::-1])),
        logits.device,
    )
    torch.cuda.empty_cache()
    return encode(logits.cpu())


def _encode_kept_and_answer(
    logits: torch.Tensor,
    needed: np.ndarray,
    kept_cols: list[int],
    answer_cols: list[int],
    frame_size: tuple[int, int],
    frames_per_chunk: int,
) -> tuple[RunLengthMasks, RunLengthMasks]:
    """Kept queries' masks ``[T, K, H, W]`` and the answer's union ``[T, H, W]``, run-length
    encoded from ``logits: [T, N, h, w]`` where they are; only run boundaries are copied to the
    host.

    Args:
        needed: ``[M] int64`` the queries to upsample (kept and answer), as columns of ``logits``.
        kept_cols, answer_cols: the kept and the answer's queries as indices into ``needed``.
    """
    index = torch.as_tensor(needed, dtype=torch.long, device=logits.device)
    kept_index = torch.as_tensor(kept_cols, dtype=torch.long, device=logits.device)
    answer_index = torch.as_tensor(answer_cols, dtype=torch.long, device=logits.device)
    kept_parts, answer_parts = [], []
    with torch.inference_mode():
        for start in range(0, logits.shape[0], frames_per_chunk):
            chunk = logits[start : start + frames_per_chunk].index_select(1, index)
            binary = threshold_mask_logits(chunk, frame_size)
            kept_parts.append(RunLengthMasks.encode_tensor(binary.index_select(1, kept_index)))
            answer = binary.index_select(1, answer_index).any(dim=1)
            answer_parts.append(RunLengthMasks.encode_tensor(answer))
    return RunLengthMasks.concatenate(kept_parts), RunLengthMasks.concatenate(answer_parts)
