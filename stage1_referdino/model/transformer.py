"""Encoder-decoder of ReferDINO (GroundingDINO layout) for inference on unpadded frames.

Image tokens are the flattened multi-level feature maps of one clip (batch = frames); the text is
the same expression repeated for every frame. The encoder fuses image and text; two-stage
proposals pick the decoder's initial boxes; the decoder prunes queries after every layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import BiAttentionBlock
from .ms_deform_attn import MultiScaleDeformableAttention
from .position_encoding import box_sine_embedding

# Anchor size of the level-0 encoder proposals (doubles at every level).
PROPOSAL_BASE_SIZE = 0.05
# Proposals with any coordinate outside (low, high) are disabled.
PROPOSAL_VALID_RANGE = (0.01, 0.99)
# Clamp of inverse_sigmoid, so that boxes at 0 or 1 stay finite.
INVERSE_SIGMOID_EPS = 1e-3


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activation by name (``relu`` or ``gelu``)."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    raise ValueError(f"unsupported activation {name!r}")


def inverse_sigmoid(x: torch.Tensor, eps: float = INVERSE_SIGMOID_EPS) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both ratio terms to at least ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def token_similarity(x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Dot product of every query with every text token: [B, N, C] x [B, L, C] -> [B, N, L]."""
    return x @ text.transpose(-1, -2)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them."""

    def __init__(
        self,
        input_dim: int,  # input width
        hidden_dim: int,  # width of the hidden layers
        output_dim: int,  # output width
        num_layers: int,  # number of Linear layers
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., input_dim] -> [..., output_dim]."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < last else layer(x)
        return x


class DeformableTransformerEncoderLayer(nn.Module):
    """Deformable self-attention over all image tokens, then an FFN (post-norm)."""

    def __init__(
        self,
        d_model: int,  # token width
        d_ffn: int,  # FFN hidden width
        activation: str,  # FFN activation
        n_levels: int,  # feature levels
        n_heads: int,  # attention heads
        n_points: int,  # sampling points per head and level
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_heads, n_levels, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """src, pos: [B, S, C]; reference_points: [B, S, levels, 2] -> [B, S, C]."""
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(self.activation(self.linear1(src))))


class TextEnhancerLayer(nn.Module):
    """Self-attention among text tokens (restricted to sub-sentences), then an FFN (post-norm)."""

    def __init__(
        self,
        d_model: int,  # token width
        nhead: int,  # attention heads
        dim_feedforward: int,  # FFN hidden width
        dropout: float,  # attention/FFN dropout (inactive at inference)
    ) -> None:
        super().__init__()
        self.nhead = nhead
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, blocked: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """src, pos: [L, B, C]; blocked: [B, L, L] bool, True where attention is not allowed."""
        blocked = blocked.repeat(self.nhead, 1, 1)
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src, attn_mask=blocked)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableTransformerDecoderLayer(nn.Module):
    """Query self-attention, text cross-attention, deformable image cross-attention, FFN.

    Also the layer of the mask decoder (one level, no text truncation).
    """

    def __init__(
        self,
        d_model: int,  # query width
        d_ffn: int,  # FFN hidden width
        dropout: float,  # attention dropout (inactive at inference)
        activation: str,  # FFN activation
        n_levels: int,  # image feature levels
        n_heads: int,  # attention heads
        n_points: int,  # deformable sampling points per head and level
        use_text_cross_attention: bool,  # attend to the text tokens
    ) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_heads, n_levels, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.use_text_cross_attention = use_text_cross_attention
        if use_text_cross_attention:
            self.ca_text = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
            self.catext_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def _ffn(self, tgt: torch.Tensor) -> torch.Tensor:
        """FFN with residual and norm, outside autocast (as the original): [N, B, C]."""
        with torch.autocast(device_type=tgt.device.type, enabled=False):
            tgt2 = self.linear2(self.activation(self.linear1(tgt)))
        return self.norm3(tgt + tgt2)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        text: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one layer.

        Args:
            tgt, query_pos: [N, B, C] queries and their position embedding.
            reference_points: [N, B, levels, 4] normalised boxes.
            text: [B, L, C] text tokens.
            memory: [B, S, C] flattened image features.
            spatial_shapes: (h, w) per level of ``memory``.

        Returns:
            (tgt [N, B, C], self-attention weights [B, N, N], heads averaged).
        """
        q = k = tgt + query_pos
        tgt2, self_weights = self.self_attn(q, k, tgt)
        tgt = self.norm2(tgt + tgt2)
        if self.use_text_cross_attention:
            text_t = text.transpose(0, 1)
            tgt = self.catext_norm(tgt + self.ca_text(tgt + query_pos, text_t, text_t)[0])
        tgt2 = self.cross_attn(
            (tgt + query_pos).transpose(0, 1),
            reference_points.transpose(0, 1).contiguous(),
            memory,
            spatial_shapes,
        ).transpose(0, 1)
        tgt = self.norm1(tgt + tgt2)
        return self._ffn(tgt), self_weights


def encoder_reference_points(
    spatial_shapes: list[tuple[int, int]], device: torch.device
) -> torch.Tensor:
    """Centre of every image token, normalised: [1, S, levels, 2] (x, y)."""
    points = []
    for h, w in spatial_shapes:
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        points.append(torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h), -1))
    ref = torch.cat(points, 1)
    return ref[:, :, None].expand(-1, -1, len(spatial_shapes), -1)


def encoder_proposals(
    memory: torch.Tensor, spatial_shapes: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One box proposal per image token (its cell centre, a level-dependent fixed size).

    Args:
        memory: [B, S, C] encoder output.

    Returns:
        (memory with disabled tokens zeroed [B, S, C],
         proposals in logit space [1, S, 4], +inf where disabled).
    """
    proposals = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
            torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
        scale = torch.tensor([w, h], dtype=torch.long, device=memory.device).view(1, 1, 1, 2)
        grid = (grid.unsqueeze(0) + 0.5) / scale
        wh = torch.ones_like(grid) * PROPOSAL_BASE_SIZE * (2.0**lvl)
        proposals.append(torch.cat((grid, wh), -1).view(1, -1, 4))
    proposals = torch.cat(proposals, 1)
    low, high = PROPOSAL_VALID_RANGE
    valid = ((proposals > low) & (proposals < high)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(~valid, float("inf"))
    return memory.masked_fill(~valid, 0.0), proposals


class TransformerEncoder(nn.Module):
    """Per layer: image-text fusion, text self-attention, deformable image self-attention."""

    def __init__(
        self,
        num_layers: int,  # encoder layers
        d_model: int,  # token width
        nhead: int,  # attention heads of the image layers
        dim_feedforward: int,  # FFN width of the image layers (text layers use half)
        activation: str,  # FFN activation of the image layers
        num_feature_levels: int,  # image feature levels
        n_points: int,  # deformable sampling points per head and level
        use_text_enhancer: bool,  # add the text self-attention layers
        use_fusion_layer: bool,  # add the image-text fusion layers
        text_dropout: float,  # dropout of the text layers (inactive at inference)
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableTransformerEncoderLayer(
                d_model, dim_feedforward, activation, num_feature_levels, nhead, n_points
            )
            for _ in range(num_layers)
        )
        self.text_layers = nn.ModuleList(
            TextEnhancerLayer(d_model, nhead // 2, dim_feedforward // 2, text_dropout)
            for _ in range(num_layers if use_text_enhancer else 0)
        )
        self.fusion_layers = nn.ModuleList(
            BiAttentionBlock(d_model, d_model, dim_feedforward // 2, nhead // 2)
            for _ in range(num_layers if use_fusion_layer else 0)
        )

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        text: torch.Tensor,
        text_pos: torch.Tensor,
        text_blocked: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one clip.

        Args:
            src, pos: [B, S, C] image tokens and their position (+ level) embedding.
            text: [B, L, C] text tokens; text_pos: [B, L, C] their position embedding.
            text_blocked: [B, L, L] bool, True where text attention is not allowed.

        Returns:
            (image memory [B, S, C], fused text [B, L, C]).
        """
        reference_points = encoder_reference_points(spatial_shapes, src.device)
        output = src
        for layer_id, layer in enumerate(self.layers):
            if self.fusion_layers:
                output, text = self.fusion_layers[layer_id](output, text)
            if self.text_layers:
                text = self.text_layers[layer_id](
                    text.transpose(0, 1), text_blocked, text_pos.transpose(0, 1)
                ).transpose(0, 1)
            output = layer(output, pos, reference_points, spatial_shapes)
        return output, text


class TransformerDecoder(nn.Module):
    """Decoder with iterative box refinement and query pruning after every layer."""

    def __init__(
        self,
        num_layers: int,  # decoder layers
        d_model: int,  # query width
        layer_kwargs: dict,  # DeformableTransformerDecoderLayer arguments (but d_model)
        query_decay: float,  # fraction of queries kept after each layer (ceil)
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableTransformerDecoderLayer(d_model, **layer_kwargs) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.query_decay = query_decay
        # Box heads, one per layer; set by the owner (shared with its prediction heads).
        self.bbox_embed: nn.ModuleList | None = None

    def _keep_scores(
        self, output: torch.Tensor, self_weights: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        """Pruning gate: [N, B, C], [B, N, N], [B, L, C] -> [B, N].

        Mean of (softmax over queries of the best token similarity) and (softmax over queries of
        the self-attention each query receives from the others).
        """
        n = output.shape[0]
        off_diagonal = 1 - torch.eye(n, device=self_weights.device)
        received = (self_weights * off_diagonal).sum(1).softmax(dim=1)
        similarity = token_similarity(output.transpose(0, 1), text).max(-1)[0].softmax(dim=1)
        return torch.stack((similarity, received), -1).mean(-1)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        refpoints_unsigmoid: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        text: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and prune.

        Args:
            tgt: [N, B, C] initial queries; refpoints_unsigmoid: [N, B, 4] initial boxes (logits).
            memory: [B, S, C] encoder output; text: [B, L, C] fused text.

        Returns:
            (normalised queries of the last layer [B, K, C], their input boxes [B, K, 4]),
            K = N * query_decay ** num_layers, rounded up at every layer.
        """
        output = tgt
        reference_points = refpoints_unsigmoid.sigmoid()
        num_levels = len(spatial_shapes)
        num_kept = tgt.shape[0]
        last_output = last_reference = None
        for layer_id, layer in enumerate(self.layers):
            query_pos = self.ref_point_head(box_sine_embedding(reference_points))
            layer_refs = reference_points[:, :, None].expand(-1, -1, num_levels, -1)
            output, self_weights = layer(
                output, query_pos, layer_refs, text, memory, spatial_shapes
            )
            gate = self._keep_scores(output, self_weights, text)
            num_kept = math.ceil(num_kept * self.query_decay)
            keep = torch.topk(gate.transpose(0, 1), num_kept, dim=0)[1]  # [K, B]
            output = output.gather(0, keep[:, :, None].expand(-1, -1, output.shape[-1]))
            reference_points = reference_points.gather(
                0, keep[:, :, None].expand(-1, -1, reference_points.shape[-1])
            )
            last_output, last_reference = output, reference_points
            delta = self.bbox_embed[layer_id](output)
            reference_points = (delta + inverse_sigmoid(reference_points)).sigmoid()
        return self.norm(last_output).transpose(0, 1), last_reference.transpose(0, 1)


class Transformer(nn.Module):
    """Encoder, two-stage query selection and decoder."""

    def __init__(
        self,
        d_model: int,  # token width (hidden_dim)
        nhead: int,  # attention heads
        num_queries: int,  # proposals selected for the decoder
        num_encoder_layers: int,  # enc_layers
        num_decoder_layers: int,  # dec_layers
        dim_feedforward: int,  # FFN width
        dropout: float,  # attention dropout (inactive at inference)
        activation: str,  # FFN activation
        num_feature_levels: int,  # image feature levels
        enc_n_points: int,  # encoder sampling points per head and level
        dec_n_points: int,  # decoder sampling points per head and level
        embed_init_tgt: bool,  # decoder content queries from tgt_embed (else from the encoder)
        use_text_enhancer: bool,  # encoder text self-attention layers
        use_fusion_layer: bool,  # encoder image-text fusion layers
        use_text_cross_attention: bool,  # decoder text cross-attention
        text_dropout: float,  # text layer dropout (inactive at inference)
        query_decay: float,  # decoder query pruning ratio per layer
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_queries = num_queries
        self.num_decoder_layers = num_decoder_layers
        self.embed_init_tgt = embed_init_tgt
        self.encoder = TransformerEncoder(
            num_encoder_layers,
            d_model,
            nhead,
            dim_feedforward,
            activation,
            num_feature_levels,
            enc_n_points,
            use_text_enhancer,
            use_fusion_layer,
            text_dropout,
        )
        self.decoder = TransformerDecoder(
            num_decoder_layers,
            d_model,
            dict(
                d_ffn=dim_feedforward,
                dropout=dropout,
                activation=activation,
                n_levels=num_feature_levels,
                n_heads=nhead,
                n_points=dec_n_points,
                use_text_cross_attention=use_text_cross_attention,
            ),
            query_decay,
        )
        self.level_embed = nn.Parameter(torch.zeros(num_feature_levels, d_model))
        self.tgt_embed = nn.Embedding(num_queries, d_model) if embed_init_tgt else None
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        # Proposal box head; set by the owner (possibly shared with the decoder's heads).
        self.enc_out_bbox_embed: nn.Module | None = None

    def _flatten_levels(
        self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Levels [B, C, h, w] -> tokens [B, S, C], position + level embedding [B, S, C]."""
        src_flat, pos_flat, spatial_shapes = [], [], []
        for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds, strict=True)):
            spatial_shapes.append((src.shape[2], src.shape[3]))
            src_flat.append(src.flatten(2).transpose(1, 2))
            pos = pos.flatten(2).transpose(1, 2)
            pos_flat.append(pos + self.level_embed[lvl].view(1, 1, -1))
        return torch.cat(src_flat, 1), torch.cat(pos_flat, 1), spatial_shapes

    def _select_queries(
        self, memory: torch.Tensor, text: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-stage selection: (content queries [B, N, C], boxes in logit space [B, N, 4])."""
        output_memory, proposals = encoder_proposals(memory, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        scores = token_similarity(output_memory, text).max(-1)[0]
        boxes = self.enc_out_bbox_embed(output_memory) + proposals
        selected = torch.topk(scores, self.num_queries, dim=1)[1]
        refpoints = torch.gather(boxes, 1, selected.unsqueeze(-1).repeat(1, 1, 4))
        bs = memory.shape[0]
        if self.embed_init_tgt:
            tgt = self.tgt_embed.weight[:, None, :].repeat(1, bs, 1).transpose(0, 1)
        else:
            tgt = torch.gather(output_memory, 1, selected.unsqueeze(-1).repeat(1, 1, self.d_model))
        return tgt, refpoints

    def forward(
        self,
        srcs: list[torch.Tensor],
        pos_embeds: list[torch.Tensor],
        text: torch.Tensor,
        text_pos: torch.Tensor,
        text_blocked: torch.Tensor,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Run one clip.

        Args:
            srcs, pos_embeds: per level [B, C, h, w] projected features and position embeddings.
            text: [B, L, C]; text_pos: [B, L, C]; text_blocked: [B, L, L] bool.

        Returns:
            dict with ``hs`` [B, K, C] (last decoder layer), ``reference`` [B, K, 4] (its input
            boxes), ``text`` [B, L, C] (fused text) and ``memory_maps``: the encoder output of
            every level but the last, [B, C, h, w] each (strides 8, 16, 32).
        """
        src, pos, spatial_shapes = self._flatten_levels(srcs, pos_embeds)
        memory, text = self.encoder(src, pos, spatial_shapes, text, text_pos, text_blocked)
        tgt, refpoints = self._select_queries(memory, text, spatial_shapes)
        hs, reference = self.decoder(
            tgt.transpose(0, 1), memory, refpoints.transpose(0, 1), spatial_shapes, text
        )
        bs, _, c = memory.shape
        memory_maps, start = [], 0
        for h, w in spatial_shapes[:-1]:
            level = memory[:, start : start + h * w, :].reshape(bs, h, w, c)
            memory_maps.append(level.permute(0, 3, 1, 2).contiguous())
            start += h * w
        return {"hs": hs, "reference": reference, "text": text, "memory_maps": memory_maps}
