"""3-D rotary position embeddings (RoPE) for video/image token grids.

Each attention head's dimension is split into three axis segments (time, height,
width), each ``2 * ((head_dim // 3) // 2)`` wide; the remaining tail dims are not
rotated. Two layouts are supported:

* ``"official"`` reproduces V-JEPA 2's released weights: the per-segment sin/cos
  tables of length d/2 are *tiled* ``[f0..f_{d/2-1}, f0..f_{d/2-1}]`` while the
  rotation pairs *adjacent* elements ``(x0, x1) -> (-x1, x0)``. Each pair therefore
  mixes two different frequencies, so it is not exactly shift-invariant.
* ``"interleaved"`` is the textbook rotation (both elements of a pair share a
  frequency), so attention logits depend only on relative positions.

Tables are computed once per forward pass (``rope_tables``) and shared by all
blocks; ``apply_rope`` is then two multiplies and an add per q/k tensor.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

RopeLayout = Literal["official", "interleaved"]
ROPE_LAYOUTS: tuple[str, ...] = ("official", "interleaved")


class RopeTables(NamedTuple):
    cos: Tensor  # (B or 1, 1, N, head_dim)
    sin: Tensor  # (B or 1, 1, N, head_dim)
    half_split: bool = False  # channels ``to_half_split``, for queries and keys projected in that order

    def rows(self, tokens: slice) -> RopeTables:
        """The tables of the tokens ``tokens`` (a slice along N)."""
        return RopeTables(self.cos[:, :, tokens], self.sin[:, :, tokens], self.half_split)

    def in_half_split_order(self) -> RopeTables:
        """These tables for queries and keys whose channels are in half-split order (``to_half_split``)."""
        return RopeTables(to_half_split(self.cos, -1), to_half_split(self.sin, -1), half_split=True)


def axis_segment_width(head_dim: int) -> int:
    """Width of each of the three rotated segments (20 for head_dim 64)."""
    return 2 * ((head_dim // 3) // 2)


def axis_frequencies(segment_width: int, theta: float = 10000.0, device=None) -> Tensor:
    """omega_i = 1 / theta^(i / (d/2)) for i < d/2."""
    half = segment_width // 2
    exponent = torch.arange(half, dtype=torch.float64, device=device) / half
    return (1.0 / theta**exponent).to(torch.float32)


def rope_tables(
    positions: Tensor,
    head_dim: int,
    layout: RopeLayout = "official",
    theta: float = 10000.0,
    axis_mask: Tensor | None = None,
) -> RopeTables:
    """Build cos/sin tables for integer (t, h, w) positions.

    Args:
        positions: (B, N, 3) or (N, 3) positions along (time, height, width).
        head_dim: per-head width; must be even.
        layout: "official" (tiled tables) or "interleaved" (textbook).
        axis_mask: optional (N, 3) or (B, N, 3) bool; False leaves that token's axis
            segment unrotated (V-JEPA 2-AC gives action/state tokens only a time position).
    """
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"unknown RoPE layout {layout!r}; expected one of {ROPE_LAYOUTS}")
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    if positions.dim() not in (2, 3) or positions.shape[-1] != 3:
        raise ValueError(f"positions must be (N, 3) or (B, N, 3) over (t, h, w), got shape {tuple(positions.shape)}")
    if positions.dim() == 2:
        positions = positions.unsqueeze(0)
    seg = axis_segment_width(head_dim)
    omega = axis_frequencies(seg, theta, device=positions.device)  # (seg/2,)
    angles = positions.to(torch.float32).unsqueeze(-1) * omega  # (B, N, 3, seg/2)
    if layout == "official":
        angles = torch.cat([angles, angles], dim=-1)  # tiled: (B, N, 3, seg)
    else:
        angles = angles.repeat_interleave(2, dim=-1)  # paired: (B, N, 3, seg)
    cos, sin = angles.cos(), angles.sin()
    if axis_mask is not None:
        keep = axis_mask.to(torch.bool)
        if keep.dim() == 2:
            keep = keep.unsqueeze(0)
        keep = keep.unsqueeze(-1)  # (B, N, 3, 1)
        cos = torch.where(keep, cos, torch.ones_like(cos))
        sin = torch.where(keep, sin, torch.zeros_like(sin))
    batch, n_tokens = cos.shape[0], cos.shape[1]
    cos = cos.reshape(batch, n_tokens, 3 * seg)
    sin = sin.reshape(batch, n_tokens, 3 * seg)
    tail = head_dim - 3 * seg
    if tail:
        cos = torch.cat([cos, cos.new_ones(batch, n_tokens, tail)], dim=-1)
        sin = torch.cat([sin, sin.new_zeros(batch, n_tokens, tail)], dim=-1)
    return RopeTables(cos.unsqueeze(1), sin.unsqueeze(1))  # (B, 1, N, head_dim)


def to_half_split(x: Tensor, dim: int) -> Tensor:
    """``x`` with the channels along ``dim`` (one head's) in half-split order: each rotated pair's first elements,
    then its second elements, (0, 2, 4, ..., 1, 3, 5, ...).

    Queries and keys both in this order give the same attention scores (a dot product does not see a
    permutation shared by its operands), and the pair swap of RoPE becomes a swap of two contiguous halves,
    which inductor vectorises; the adjacent-pair swap it writes as scalar stride-2 loops. Views and one copy, no
    index tensor: applied to folded weights, inductor computes it once, at compile time."""
    dim = dim % x.dim()
    return x.unflatten(dim, (-1, 2)).transpose(dim, dim + 1).flatten(dim, dim + 1)


def rotate_halves(x: Tensor) -> Tensor:
    """``rotate_pairs`` in half-split order (``to_half_split``): (a, b) -> (-b, a) for the two halves a, b."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: Tensor, tables: RopeTables) -> Tensor:
    """Rotate queries or keys. x: (..., B, H, N, head_dim), e.g. queries and keys stacked as (2, B, H, N, head_dim);
    tables follow x's dtype (bf16/fp16 runs). Tables ``in_half_split_order`` rotate x's channels in that order."""
    rotated = rotate_halves(x) if tables.half_split else rotate_pairs(x)
    return x * tables.cos.to(x.dtype) + rotated * tables.sin.to(x.dtype)


def grid_positions(t: int, h: int, w: int, device=None) -> Tensor:
    """(t*h*w, 3) integer positions in the official token order (time-major, then rows)."""
    tt, hh, ww = torch.meshgrid(
        torch.arange(t, device=device), torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)


def positions_from_ids(token_ids: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Recover (t, h, w) from flat token ids so masked (kept) tokens keep their positions.

    token_ids: (B, N) or (N,) -> (B, N, 3) or (N, 3).
    """
    h, w = grid_hw
    t_pos = torch.div(token_ids, h * w, rounding_mode="floor")
    rem = token_ids - t_pos * (h * w)
    h_pos = torch.div(rem, w, rounding_mode="floor")
    w_pos = rem - h_pos * w
    return torch.stack([t_pos, h_pos, w_pos], dim=-1)
