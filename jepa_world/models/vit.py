"""Vision Transformer encoder for images and videos (V-JEPA 2 / I-JEPA layout).

Tokens come from a Conv3d over ``tubelet_size x patch x patch`` tubelets (or a Conv2d
per frame), in time-major then row-major order: ``id = t*h*w + row*w + col``. A
single image is fed as a ``tubelet_size``-frame clip of the repeated frame, as V-JEPA 2
does. Positions enter either through 3-D RoPE (the released models) or a fixed sincos
table added to the patch embeddings. ``forward(x, masks)`` can keep only a subset of
token ids; positions are recovered from the ids, so masked tokens keep their place.

Parameter names match the official release (``patch_embed.proj``, ``blocks.N.*``,
``norm``), so official state dicts load after prefix stripping (see ``official.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from jepa_world.models.layers import (
    LAYER_NORM_EPS,
    Block,
    init_transformer_weights,
    rescale_block_residuals,
    run_blocks,
)
from jepa_world.models.rope import ROPE_LAYOUTS, RopeTables, grid_positions, positions_from_ids, rope_tables

PosEmbed = Literal["rope", "sincos"]
PatchEmbedKind = Literal["3d", "2d"]
POS_EMBEDS: tuple[str, ...] = ("rope", "sincos")
PATCH_EMBEDS: tuple[str, ...] = ("3d", "2d")


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden_dim: int


VIT_SIZES: dict[str, ViTSize] = {
    "micro": ViTSize(96, 4, 3, 384),  # CPU tests and smoke runs
    "tiny": ViTSize(192, 12, 3, 768),
    "small": ViTSize(384, 12, 6, 1536),
    "base": ViTSize(768, 12, 12, 3072),
    "large": ViTSize(1024, 24, 16, 4096),
    "huge": ViTSize(1280, 32, 16, 5120),
    "giant": ViTSize(1408, 40, 22, 6144),  # "vit_giant_xformers": mlp ratio 48/11
}


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"ViTConfig.{name}={value!r} is not one of {tuple(choices)}")


@dataclass
class ViTConfig:
    """Encoder configuration.

    ``size`` picks a row of ``VIT_SIZES``; ``embed_dim``/``depth``/``num_heads``/
    ``mlp_hidden_dim`` override it when set. ``img_size`` and ``num_frames`` are the
    nominal input (used by benchmarks and conversion); any input whose frames divide by
    the tubelet and whose sides divide by the patch size is accepted.
    """

    size: str = "tiny"
    img_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 2
    num_frames: int = 16
    in_chans: int = 3
    pos_embed: PosEmbed = "rope"
    rope_layout: str = "official"
    rope_theta: float = 10000.0
    patch_embed: PatchEmbedKind = "3d"
    activation_checkpointing: bool = False
    qkv_bias: bool = True
    init_std: float = 0.02
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_hidden_dim: int | None = None

    def __post_init__(self) -> None:
        if self.size not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {self.size!r}; available sizes: {', '.join(VIT_SIZES)}")
        _check_choice("pos_embed", self.pos_embed, POS_EMBEDS)
        _check_choice("rope_layout", self.rope_layout, ROPE_LAYOUTS)
        _check_choice("patch_embed", self.patch_embed, PATCH_EMBEDS)
        preset = VIT_SIZES[self.size]
        for field in fields(ViTSize):
            if getattr(self, field.name) is None:
                setattr(self, field.name, getattr(preset, field.name))
        for name in ("img_size", "patch_size", "tubelet_size", "num_frames", "in_chans", "embed_dim", "depth",
                     "num_heads", "mlp_hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive int, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViTConfig.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.pos_embed == "rope" and (self.embed_dim // self.num_heads) < 6:
            raise ValueError(f"RoPE needs head_dim >= 6, got embed_dim/num_heads={self.embed_dim // self.num_heads}")
        if self.pos_embed == "sincos" and self.embed_dim % 8:
            raise ValueError(f"sincos positions need embed_dim divisible by 8, got {self.embed_dim}")

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(N,) positions -> (N, dim) as [sin(p*w_0..), cos(p*w_0..)], w_i = 1/10000^(i/(dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).to(torch.float32)


def sincos_table(grid: tuple[int, int, int], dim: int, device=None) -> Tensor:
    """Fixed absolute positions for a (t, h, w) grid -> (t*h*w, dim).

    Videos follow V-JEPA: [time D/2, height D/4, width D/4]. Single-frame grids follow
    I-JEPA's 2-D table, whose first half encodes the column and second half the row.
    """
    t, h, w = grid
    pos = grid_positions(t, h, w, device=device)  # (N, 3)
    if t == 1:
        return torch.cat([sincos_1d(dim // 2, pos[:, 2]), sincos_1d(dim // 2, pos[:, 1])], dim=1)
    return torch.cat(
        [sincos_1d(dim // 2, pos[:, 0]), sincos_1d(dim // 4, pos[:, 1]), sincos_1d(dim // 4, pos[:, 2])], dim=1
    )


class PatchEmbed(nn.Module):
    """Tubelet (Conv3d) or per-frame (Conv2d) patchifier; the conv is stored as ``proj``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.kind = cfg.patch_embed
        self.tubelet_size = cfg.tubelet_size if cfg.patch_embed == "3d" else 1
        p = cfg.patch_size
        if cfg.patch_embed == "3d":
            kernel = (cfg.tubelet_size, p, p)
            self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=kernel, stride=kernel)
        else:
            self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T, H, W) -> (B, N, D), time-major."""
        if self.kind == "3d":
            return self.proj(x).flatten(2).transpose(1, 2)  # (B, t*h*w, D)
        batch, _, frames = x.shape[:3]
        per_frame = self.proj(x.transpose(1, 2).flatten(0, 1))  # (B*T, D, h, w)
        per_frame = per_frame.flatten(2).transpose(1, 2)  # (B*T, h*w, D)
        return per_frame.reshape(batch, -1, per_frame.shape[-1])  # (B, T*h*w, D)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.embed_dim // cfg.num_heads
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden_dim, cfg.qkv_bias) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=LAYER_NORM_EPS)
        self._position_cache: dict[tuple, RopeTables | Tensor] = {}
        self.apply(lambda m: init_transformer_weights(m, cfg.init_std))
        rescale_block_residuals(self.blocks)

    def grid_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid (t, h, w) for an input shape (B,C,H,W) or (B,C,T,H,W); validates it."""
        shape = tuple(input_shape)
        cfg = self.cfg
        if len(shape) == 4:
            frames = self.patch_embed.tubelet_size
        elif len(shape) == 5:
            frames = shape[2]
        else:
            raise ValueError(f"encoder input must be (B,C,H,W) or (B,C,T,H,W), got shape {shape}")
        if shape[1] != cfg.in_chans:
            raise ValueError(f"encoder input has {shape[1]} channels at dim 1, expected {cfg.in_chans}; shape {shape}")
        height, width = shape[-2:]
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(f"input height/width {height}x{width} must be divisible by patch_size={cfg.patch_size}")
        tubelet = self.patch_embed.tubelet_size
        if frames % tubelet:
            raise ValueError(
                f"number of frames {frames} must be divisible by tubelet_size={tubelet} "
                "(pass a single image as (B,C,H,W))"
            )
        return frames // tubelet, height // cfg.patch_size, width // cfg.patch_size

    def full_grid_positions(self, grid: tuple[int, int, int], device: torch.device) -> RopeTables | Tensor:
        """RoPE tables or sincos table of the whole grid, cached per (grid, device)."""
        key = (grid, str(device), self.cfg.pos_embed)
        if key not in self._position_cache:
            with torch.inference_mode(False):  # built by a planner in inference mode, still usable in training
                if self.cfg.pos_embed == "rope":
                    value = self._rope(grid_positions(*grid, device=device))
                else:
                    value = sincos_table(grid, self.embed_dim, device=device)
            self._position_cache[key] = value
        return self._position_cache[key]

    def _rope(self, positions: Tensor) -> RopeTables:
        return rope_tables(positions, self.head_dim, self.cfg.rope_layout, self.cfg.rope_theta)

    def forward(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """x (B,C,H,W) or (B,C,T,H,W) -> (B, N, D); with masks (B, K) token ids -> (B, K, D)."""
        grid = self.grid_shape(x.shape)
        if x.dim() == 4:
            x = x.unsqueeze(2).expand(-1, -1, self.patch_embed.tubelet_size, -1, -1)  # image as a static clip
        tokens = self.patch_embed(x)  # (B, N, D)
        full = self.full_grid_positions(grid, tokens.device)
        rope = None
        if self.cfg.pos_embed == "sincos":
            tokens = tokens + full.to(tokens.dtype)
        if masks is None:
            rope = full if self.cfg.pos_embed == "rope" else None
        else:
            check_token_ids(masks, tokens.shape[0], math.prod(grid), "masks")
            tokens = gather_tokens(tokens, masks)  # (B, K, D)
            if self.cfg.pos_embed == "rope":
                rope = self._rope(positions_from_ids(masks, grid[1:]))
        tokens = run_blocks(self.blocks, tokens, rope, activation_checkpointing=self.cfg.activation_checkpointing)
        return self.norm(tokens)

    def _apply(self, fn, recurse: bool = True):
        self._position_cache.clear()  # tables are rebuilt on the new device/dtype
        return super()._apply(fn, recurse)


def gather_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """tokens (B, N, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def check_token_ids(ids: Tensor, batch_size: int, num_tokens: int, name: str) -> None:
    """Validate (B, K) long token ids against a grid of ``num_tokens``.

    The range check reads values back to the host, so it runs only for CPU tensors in eager mode;
    on accelerators and under torch.compile it would stall the pipeline every call.
    """
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        desc = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be a (B, K) torch.long tensor of token ids, got {desc}")
    if ids.shape[0] != batch_size:
        raise ValueError(f"{name} has batch {ids.shape[0]} but the tokens have batch {batch_size}")
    if ids.numel() and ids.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = torch.stack(torch.aminmax(ids)).tolist()
        if low < 0 or high >= num_tokens:
            raise ValueError(f"{name} holds ids in [{low}, {high}], outside the {num_tokens}-token grid")


def build_encoder(size: str, **overrides) -> VisionTransformer:
    """``build_encoder("tiny", img_size=64, patch_size=8)``."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; available sizes: {', '.join(VIT_SIZES)}")
    known = {f.name for f in fields(ViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown ViTConfig field(s) {unknown}; valid fields: {sorted(known)}")
    return VisionTransformer(ViTConfig(size=size, **overrides))
