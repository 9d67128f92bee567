"""Masked latent predictor (V-JEPA 2 / I-JEPA pretraining).

Context tokens from the encoder are embedded to the predictor width, learnable mask
tokens are placed at the target positions, a narrow transformer mixes them, and only
the target outputs are normed and projected back to the encoder width. Positions come
from token ids (3-D RoPE, or the same sincos table as the encoder), so the predictor
works for any grid and any mask.

Parameter names match the official predictor: ``predictor_embed``, ``mask_tokens.i``,
``predictor_blocks.N.*``, ``predictor_norm``, ``predictor_proj``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from jepa_world.models.layers import (
    LAYER_NORM_EPS,
    Block,
    init_transformer_weights,
    rescale_block_residuals,
    run_blocks,
)
from jepa_world.models.rope import ROPE_LAYOUTS, positions_from_ids, rope_tables
from jepa_world.models.vit import POS_EMBEDS, check_token_ids, sincos_table


@dataclass
class PredictorConfig:
    """Defaults follow V-JEPA 2: 12 blocks, 384 wide, 12 heads, 2 mask tokens (one per mask generator)."""

    encoder_dim: int = 192
    dim: int = 384
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_mask_tokens: int = 2
    pos_embed: str = "rope"
    rope_layout: str = "official"
    rope_theta: float = 10000.0
    qkv_bias: bool = True
    zero_init_mask_tokens: bool = True
    activation_checkpointing: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("encoder_dim", "dim", "depth", "num_heads", "num_mask_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PredictorConfig.{name} must be a positive int, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"PredictorConfig.dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"PredictorConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"PredictorConfig.pos_embed={self.pos_embed!r} is not one of {POS_EMBEDS}")
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"PredictorConfig.rope_layout={self.rope_layout!r} is not one of {ROPE_LAYOUTS}")

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)


class MaskedPredictor(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        self.head_dim = cfg.dim // cfg.num_heads
        self.predictor_embed = nn.Linear(cfg.encoder_dim, cfg.dim)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, cfg.dim)) for _ in range(cfg.num_mask_tokens))
        self.predictor_blocks = nn.ModuleList(
            Block(cfg.dim, cfg.num_heads, cfg.mlp_hidden_dim, cfg.qkv_bias) for _ in range(cfg.depth)
        )
        self.predictor_norm = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.predictor_proj = nn.Linear(cfg.dim, cfg.encoder_dim)
        self.apply(lambda m: init_transformer_weights(m, cfg.init_std))
        rescale_block_residuals(self.predictor_blocks)
        if not cfg.zero_init_mask_tokens:
            for token in self.mask_tokens:
                nn.init.trunc_normal_(token, std=cfg.init_std)

    def forward(
        self,
        context_tokens: Tensor,
        context_ids: Tensor,
        target_ids: Tensor,
        grid_shape: tuple[int, int, int],
        mask_index: int = 0,
    ) -> Tensor:
        """context_tokens (B,Nc,D), context_ids (B,Nc), target_ids (B,Nt) -> predictions (B,Nt,D).

        ``grid_shape`` is the encoder's (t, h, w) token grid; ``mask_index`` picks the
        mask token of the mask generator that produced ``target_ids``.
        """
        batch, n_context, _ = self._check_inputs(context_tokens, context_ids, target_ids, grid_shape, mask_index)
        n_target = target_ids.shape[1]
        context = self.predictor_embed(context_tokens)  # (B, Nc, d)
        targets = self.mask_tokens[mask_index].to(context.dtype).expand(batch, n_target, -1)  # (B, Nt, d)
        tokens = torch.cat([context, targets], dim=1)  # (B, Nc+Nt, d)
        ids = torch.cat([context_ids, target_ids], dim=1)  # (B, Nc+Nt)
        rope = None
        if self.cfg.pos_embed == "rope":
            rope = rope_tables(positions_from_ids(ids, grid_shape[1:]), self.head_dim, self.cfg.rope_layout,
                               self.cfg.rope_theta)
        else:
            table = sincos_table(tuple(grid_shape), self.cfg.dim, device=tokens.device).to(tokens.dtype)  # (N, d)
            tokens = tokens + table[ids]
        tokens = run_blocks(self.predictor_blocks, tokens, rope,
                            activation_checkpointing=self.cfg.activation_checkpointing)
        return self.predictor_proj(self.predictor_norm(tokens[:, n_context:]))  # (B, Nt, D)

    def _check_inputs(self, context_tokens, context_ids, target_ids, grid_shape, mask_index) -> tuple[int, int, int]:
        if context_tokens.dim() != 3 or context_tokens.shape[-1] != self.cfg.encoder_dim:
            raise ValueError(
                f"context_tokens must be (B, Nc, {self.cfg.encoder_dim}), got {tuple(context_tokens.shape)}"
            )
        if len(grid_shape) != 3:
            raise ValueError(f"grid_shape must be the encoder's (t, h, w) token grid, got {grid_shape!r}")
        batch, n_context, dim = context_tokens.shape
        num_tokens = math.prod(grid_shape)
        check_token_ids(context_ids, batch, num_tokens, "context_ids")
        check_token_ids(target_ids, batch, num_tokens, "target_ids")
        if context_ids.shape[1] != n_context:
            raise ValueError(f"context_ids has {context_ids.shape[1]} ids but context_tokens has {n_context} tokens")
        if not 0 <= mask_index < self.cfg.num_mask_tokens:
            raise ValueError(f"mask_index={mask_index} out of range; the predictor has "
                             f"{self.cfg.num_mask_tokens} mask tokens")
        return batch, n_context, dim
