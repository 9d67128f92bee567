"""VL-JEPA-style language head: frozen visual latents (+ optional text query) -> shared space.

The head reads the world model's frame latents (``WorldModel.encode`` or predicted
``rollout`` latents, ``(B, N, D)`` per frame or ``(B, T, N, D)`` per clip), adds fixed
3-D sin-cos positions (absolute positions are what "upper left" is about; the encoder's
RoPE gives only relative ones), optionally prepends query tokens made from the text
encoder's embedding of a question, runs bidirectional transformer blocks, average-pools
every token and projects linearly into the text encoder's embedding space.

Training is bidirectional InfoNCE against the frozen text encoder's caption embedding,
with a learnable temperature. Templated captions repeat inside a batch, so samples that
share a fact label are all positives (soft targets) instead of false negatives.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_world.models.layers import LAYER_NORM_EPS, Block, init_transformer_weights, rescale_block_residuals
from jepa_world.models.rope import grid_positions


@dataclass
class LanguageHeadConfig:
    latent_dim: int = 192  # D of the world model's latents
    embed_dim: int = 384  # shared space = the text encoder's dimension
    width: int = 192
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_query_tokens: int = 1  # tokens made from one query embedding; 0: the head takes no query
    # > 0: latents are standardised per (token, dim) with statistics fitted on the training frames
    # (fit_latent_stats); the frame count and grid must then give this many tokens per frame.
    num_tokens: int = 0
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        if self.num_tokens < 0:
            raise ValueError(f"LanguageHeadConfig.num_tokens must be >= 0, got {self.num_tokens}")
        if self.num_query_tokens < 0:
            raise ValueError(f"LanguageHeadConfig.num_query_tokens must be >= 0, got {self.num_query_tokens}")
        for name in ("latent_dim", "embed_dim", "width", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"LanguageHeadConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"LanguageHeadConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.width % 16:
            raise ValueError(f"LanguageHeadConfig.width={self.width} must be a multiple of 16 (3-D sin-cos positions)")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"LanguageHeadConfig.init_temperature must be in (0, 1), got {self.init_temperature}")


LANGUAGE_HEAD_SIZES: dict[str, dict[str, int]] = {
    "micro": dict(width=96, depth=2, num_heads=3),  # CPU tests and smoke runs
    "tiny": dict(width=192, depth=2, num_heads=4),
    "small": dict(width=384, depth=4, num_heads=6),
    "base": dict(width=768, depth=6, num_heads=12),
}


def _sincos(positions: Tensor, dim: int) -> Tensor:
    """(N,) integer positions -> (N, dim) [sin | cos] features."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[:, None] * omega  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def sincos_3d(t: int, h: int, w: int, dim: int) -> Tensor:
    """(t*h*w, dim) fixed positions in token order; time gets dim/4, each spatial axis 3*dim/8."""
    pos = grid_positions(t, h, w)  # (N, 3)
    d_t, d_s = dim // 4, 3 * dim // 8
    return torch.cat([_sincos(pos[:, 0], d_t), _sincos(pos[:, 1], d_s), _sincos(pos[:, 2], d_s)], dim=-1)


class LanguageHead(nn.Module):
    def __init__(self, config: LanguageHeadConfig):
        super().__init__()
        self.config = c = config
        self.latent_embed = nn.Linear(c.latent_dim, c.width)
        if c.num_query_tokens:
            self.query_embed = nn.Linear(c.embed_dim, c.num_query_tokens * c.width)
            self.query_type = nn.Parameter(torch.zeros(1, c.num_query_tokens, c.width))
        self.blocks = nn.ModuleList(
            [Block(c.width, c.num_heads, int(c.width * c.mlp_ratio)) for _ in range(c.depth)]
        )
        self.norm = nn.LayerNorm(c.width, eps=LAYER_NORM_EPS)
        self.proj = nn.Linear(c.width, c.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / c.init_temperature)))
        if c.num_tokens:
            self.register_buffer("latent_mean", torch.zeros(c.num_tokens, c.latent_dim))
            self.register_buffer("latent_std", torch.ones(c.num_tokens, c.latent_dim))
        self.apply(init_transformer_weights)
        # Latents are layer-normed (unit variance per dim): a 1/sqrt(D) input projection puts the
        # tokens on the same scale as the unit sin-cos positions. With the 0.02 default, positions
        # dominate the first attention and training often stalls on a plateau (2 of 3 seeds).
        nn.init.trunc_normal_(self.latent_embed.weight, std=c.latent_dim**-0.5)
        if c.num_query_tokens:
            nn.init.trunc_normal_(self.query_type, std=0.02)
        rescale_block_residuals(self.blocks)
        self._positions: dict[tuple[int, int, int], Tensor] = {}

    @torch.no_grad()
    def fit_latent_stats(self, latents: Tensor, min_std: float = 1e-3) -> None:
        """Per-(token, dim) mean and std of (M, N, D) training-frame latents.

        A frozen encoder's tokens are dominated by the static scene (on reach at 64 px only ~2-7 %
        of their variance changes from frame to frame); standardising against the dataset makes the
        arm's share of the signal visible to the head from the first step.
        """
        if not self.config.num_tokens:
            raise ValueError("this head was built with num_tokens=0 and keeps no latent statistics")
        if latents.dim() != 3 or latents.shape[1:] != self.latent_mean.shape:
            raise ValueError(f"latents must be (M, {self.config.num_tokens}, {self.config.latent_dim}), got {tuple(latents.shape)}")
        self.latent_mean.copy_(latents.mean(0))
        self.latent_std.copy_(latents.std(0).clamp_min(min_std))

    def positions(self, t: int, h: int, w: int, device: torch.device) -> Tensor:
        key = (t, h, w)
        if key not in self._positions:
            self._positions[key] = sincos_3d(t, h, w, self.config.width)
        return self._positions[key].to(device)  # (t*h*w, W)

    def forward(self, latents: Tensor, grid_hw: tuple[int, int], query: Tensor | None = None) -> Tensor:
        """Embed latents into the shared space.

        Args:
            latents: (B, N, D) one frame or (B, T, N, D) a clip, N = h*w.
            grid_hw: the (h, w) token grid of one frame.
            query: optional (B, Dt) or (1, Dt) text-encoder embedding of a question.
        Returns:
            (B, embed_dim) unit-norm embeddings.
        """
        c = self.config
        if latents.dim() == 3:
            latents = latents.unsqueeze(1)  # (B, 1, N, D)
        if latents.dim() != 4 or latents.shape[-1] != c.latent_dim:
            raise ValueError(
                f"latents must be (B, N, {c.latent_dim}) or (B, T, N, {c.latent_dim}), got {tuple(latents.shape)}"
            )
        batch, frames, n_tokens, _ = latents.shape
        h, w = grid_hw
        if h * w != n_tokens:
            raise ValueError(f"grid_hw {grid_hw} has {h * w} tokens but the latents have {n_tokens} per frame")
        if c.num_tokens:
            if n_tokens != c.num_tokens:
                raise ValueError(f"this head standardises {c.num_tokens} tokens per frame, got {n_tokens}")
            latents = (latents - self.latent_mean) / self.latent_std
        x = self.latent_embed(latents.flatten(1, 2)) + self.positions(frames, h, w, latents.device)  # (B, T*N, W)
        if query is not None:
            if not c.num_query_tokens:
                raise ValueError("this head was built with num_query_tokens=0 and takes no query")
            if query.dim() != 2 or query.shape[-1] != c.embed_dim or query.shape[0] not in (1, batch):
                raise ValueError(f"query must be (B or 1, {c.embed_dim}), got {tuple(query.shape)}")
            q = self.query_embed(query).unflatten(-1, (c.num_query_tokens, c.width)) + self.query_type  # (B|1, Q, W)
            x = torch.cat([q.expand(batch, -1, -1), x], dim=1)  # (B, Q + T*N, W)
        for block in self.blocks:
            x = block(x)  # bidirectional: no attention mask
        pooled = self.norm(x).mean(dim=1)  # (B, W)
        return F.normalize(self.proj(pooled), dim=-1)  # (B, embed_dim)

    def temperature_scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def config_dict(self) -> dict:
        return asdict(self.config)


def info_nce(
    visual: Tensor, text: Tensor, logit_scale: Tensor, labels: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Bidirectional InfoNCE between unit-norm (B, E) visual and text embeddings.

    With ``labels`` (B,), every pair sharing a label is a positive (soft target spread
    evenly over them); without, only the diagonal is. Returns (loss, visual->text top-1 accuracy).
    """
    if visual.shape != text.shape or visual.dim() != 2:
        raise ValueError(f"visual and text embeddings must both be (B, E), got {tuple(visual.shape)} and {tuple(text.shape)}")
    logits = logit_scale * visual @ text.T  # (B, B)
    if labels is None:
        positives = torch.eye(len(visual), dtype=torch.bool, device=visual.device)
    else:
        positives = labels[:, None] == labels[None, :]  # (B, B), diagonal always True
    targets = positives.float()
    loss_v2t = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    loss_t2v = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(dim=0)).sum(0).mean()
    accuracy = positives.gather(1, logits.argmax(dim=1, keepdim=True)).float().mean()
    return 0.5 * (loss_v2t + loss_t2v), accuracy
