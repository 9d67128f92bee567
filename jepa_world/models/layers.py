"""Transformer building blocks shared by the encoder and both predictors.

Parameter names follow V-JEPA 2's release (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``) so official state dicts map 1:1.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jepa_world.frozen_compile import gelu_in_folded_product, weights_folded
from jepa_world.models.rope import RopeTables, apply_rope, to_half_split

LAYER_NORM_EPS = 1e-6
# Up to this many keys, CPU attention runs as explicit matmul + softmax wherever the CPU flash kernel of
# scaled_dot_product_attention is the slower one (docs/speed.md): in bf16 (2-3x slower: 300 x 6 heads
# x 2 queries x 10 keys: 2.0 vs 0.96 ms) and in fp32 with more than one thread, where the kernel's parallel
# loop costs more than the work (2 threads, AMD EPYC: 2.7 vs 0.56 ms at 300 x 2 x 10; 6.0 vs 3.1 ms at
# 300 x 18 x 36). On one fp32 thread the kernel is as fast or faster (0.57 vs 1.2 ms for single queries).
# Long sequences keep the kernel, which never materialises the score matrix.
SHORT_ATTENTION_KEYS = 64
# One query over a handful of keys (KV-cached decoding at one token per step) is faster as a broadcast
# multiply-and-sum than as two batched matmuls of a 1-row matrix (300 x 6 heads x 32-d, 2 threads, Intel
# Xeon: fp32 97-314 vs 214-398 us for 1-6 keys, bf16 204-362 vs 396-720 us); from 16 keys bmm wins.
SINGLE_QUERY_SUM_KEYS = 8


def linear(layer: nn.Linear, x: Tensor, outputs: slice | Callable[[Tensor], Tensor] | None = None,
           bias_in_folded_product: bool = False) -> Tensor:
    """``layer(x)``, or only its output features ``outputs`` (a slice, or a function that selects or reorders
    the weight's and the bias's rows); under torch.compile the bias is added as its own elementwise op, except
    with ``bias_in_folded_product`` in a graph with folded weights.

    Traced as one ``addmm``, a CPU linear first copies the bias into every output row and then accumulates
    the product onto it; inductor unfuses that only on GPUs. A plain matmul plus an add lets inductor fold
    the bias into the elementwise kernel that follows (RoPE, GELU, the residual add): 4-5% of a compiled
    300-sample rollout on this CPU (docs/speed.md). Eager keeps the single ``addmm``. With folded weights
    (``weights_folded``) oneDNN's packed product takes the bias, and a GELU after it, as post-ops."""
    split_bias = torch.compiler.is_compiling() and not (bias_in_folded_product and weights_folded())
    if outputs is None and (layer.bias is None or not split_bias):
        return layer(x)
    weight, bias = layer.weight, layer.bias
    if outputs is not None:
        pick = outputs if callable(outputs) else lambda rows: rows[outputs]
        weight, bias = pick(weight), None if bias is None else pick(bias)
    if bias is None or not split_bias:
        return F.linear(x, weight, bias)
    out = F.linear(x, weight)
    return out + bias.to(out.dtype)  # under autocast the product is bf16: keep it so


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        if weights_folded() and not gelu_in_folded_product():
            # inductor's erf is a division and an exp per element: the rational erf runs 1.02-1.03x per rollout
            # with AVX2 code (docs/speed.md, "seventeenth session")
            return linear(self.fc2, gelu_rational_erf(linear(self.fc1, x)))
        # folded, fc1's bias and exact GELU run inside oneDNN's product: 1.011-1.020x per rollout (docs/speed.md)
        return linear(self.fc2, self.act(linear(self.fc1, x, bias_in_folded_product=gelu_in_folded_product())))


# erf(z) = z P(z^2) / Q(z^2) on |z| <= ERF_SATURATES: a (5, 5) rational fit by least squares reweighted towards
# the minimax (Lawson), max error 1.5e-8 in fp64 and 4.2e-7 evaluated in fp32 (ATen's vectorised erf,
# Abramowitz-Stegun 7.1.26 with an exp, 1.5e-7). Past 3.9, erf is +-1 to fp32 precision.
ERF_NUMERATOR = (1.1283790330459715, 0.1919331036069453, 0.052965570756964626, 0.0038364470537599065,
                 0.0002874322090483443, 2.0502526077540146e-06)
ERF_DENOMINATOR = (1.0, 0.503428068934396, 0.11475465434320077, 0.0151083684278959, 0.0011816009652013116,
                   3.8228019063012664e-05)
ERF_SATURATES = 3.9


def gelu_rational_erf(x: Tensor) -> Tensor:
    """Exact (erf) GELU with erf as a rational function: only multiplies, adds and one division, which inductor
    fuses and vectorises. Within 1.2e-6 of the fp64 GELU, as ``F.gelu`` in fp32."""
    z = (x * 0.5**0.5).clamp(-ERF_SATURATES, ERF_SATURATES)
    z2 = z * z
    numerator, denominator = ERF_NUMERATOR[-1], ERF_DENOMINATOR[-1]
    for p, q in zip(ERF_NUMERATOR[-2::-1], ERF_DENOMINATOR[-2::-1]):  # Horner
        numerator, denominator = numerator * z2 + p, denominator * z2 + q
    # the fit ends 1e-7 off +-1: x floored at -8 (where GELU is 0 to 1e-14) keeps that error under 5e-7
    return 0.5 * x.clamp(min=-8.0) * (1 + z * numerator / denominator)


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` with optional RoPE.

    ``project_qkv`` and ``attend`` are exposed separately so that callers with a KV
    cache (the action-conditioned predictor) can reuse cached keys/values.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def project_qkv(self, x: Tensor, rope: RopeTables | None = None,
                    qk_half_split: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v, each (B, H, N, hd). With ``qk_half_split`` each head's query and key channels come in
        half-split order (``rope.to_half_split``; scores unchanged), and ``rope``, if given, must be in that order."""
        batch, n_tokens, _ = x.shape
        if rope is not None and rope.half_split != qk_half_split:
            raise ValueError(f"RoPE tables with half_split={rope.half_split} for queries and keys with "
                             f"qk_half_split={qk_half_split}: the channel orders must match")
        reorder = self.qk_rows_half_split if qk_half_split else None
        qkv = linear(self.qkv, x, outputs=reorder).reshape(batch, n_tokens, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        if rope is None:
            return qkv.unbind(0)
        # Queries and keys rotated in one pass: half the elementwise calls, the same numbers
        # (0.3 of 4.6 ms per eager encode of the shipped reach model's 64-token ViT).
        q, k = apply_rope(qkv[:2], rope).unbind(0)
        return q, k, qkv[2]

    def qk_rows_half_split(self, rows: Tensor) -> Tensor:
        """The qkv projection's weight or bias rows (3 * D, ...) with each head's query and key rows in half-split
        order (``to_half_split``); in a graph with folded weights inductor computes it once."""
        parts = rows.unflatten(0, (3, self.num_heads, self.head_dim))  # (3, H, hd, ...)
        return torch.cat([to_half_split(parts[:2], 2), parts[2:]]).flatten(0, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if attn_mask is None and k.shape[-2] == 1:
            # One key (the first step of a KV-cached rollout at one token per step): its softmax weight is
            # exactly 1 for any finite score, so every query reads its value. Any kernel would cost more than
            # the answer: 63-136 us per call for SDPA at 64 samples x 4 heads on a CPU thread.
            out = v.expand(-1, -1, q.shape[-2], -1)
        elif prefers_explicit_attention(q, k):
            out = explicit_attention(q, k, v, attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, Nq, hd)
        return linear(self.proj, out.transpose(1, 2).flatten(2))  # (B, Nq, D)

    def attend_self(self, x: Tensor) -> Tensor:
        """(B, N, D) tokens that each attend to themselves alone -> (B, N, D).

        A single key's softmax weight is exactly 1, so each token reads its own value: the output is the
        projected value, and queries and keys are never formed (a third of the QKV product, RoPE and the
        attention call saved; the numbers equal ``attend``'s)."""
        dim = self.proj.in_features
        return linear(self.proj, linear(self.qkv, x, outputs=slice(2 * dim, 3 * dim)))

    def forward(self, x: Tensor, rope: RopeTables | None = None, attn_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.project_qkv(x, rope)
        return self.attend(q, k, v, attn_mask)


@torch.compiler.assume_constant_result
def torch_threads() -> int:
    """``torch.get_num_threads()`` as a constant for torch.compile: dynamo cannot trace the call (an int from a
    torch function), and a graph break inside the predictor's layer loop would make it run the whole cached
    step eagerly. A graph keeps the attention path it traced if the count changes later, which costs speed
    only (the two paths agree to about 2e-7)."""
    return torch.get_num_threads()


def prefers_explicit_attention(q: Tensor, k: Tensor) -> bool:
    """Whether ``explicit_attention`` beats the SDPA kernel here (``SHORT_ATTENTION_KEYS``)."""
    short_on_cpu = q.device.type == "cpu" and k.shape[-2] <= SHORT_ATTENTION_KEYS
    return short_on_cpu and (q.dtype == torch.bfloat16 or torch_threads() > 1)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(hd)) v with a bool mask (True = attend), as ``scaled_dot_product_attention``."""
    if attn_mask is None and q.shape[-2] == 1 and k.shape[-2] <= SINGLE_QUERY_SUM_KEYS:
        weights = ((q * k).sum(-1) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, H, Nk)
        return (weights.unsqueeze(-1).to(v.dtype) * v).sum(-2, keepdim=True)  # (B, H, 1, hd)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Nq, Nk)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_hidden_dim)

    def forward(self, x: Tensor, rope: RopeTables | None = None, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_mask)
        return x + self.mlp(self.norm2(x))


def run_blocks(
    blocks: nn.ModuleList,
    x: Tensor,
    rope: RopeTables | None = None,
    attn_mask: Tensor | None = None,
    activation_checkpointing: bool = False,
) -> Tensor:
    """Apply blocks in order, sharing one set of RoPE tables.

    With ``activation_checkpointing`` each block's activations are recomputed in the
    backward pass (only while gradients are being recorded), trading compute for memory.
    """
    recompute = activation_checkpointing and torch.is_grad_enabled()
    for block in blocks:
        if recompute:
            x = checkpoint(block, x, rope, attn_mask, use_reentrant=False)
        else:
            x = block(x, rope, attn_mask)
    return x


def init_transformer_weights(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal linear/conv weights, zero biases, unit LayerNorm (V-JEPA 2 / timm default)."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def rescale_block_residuals(blocks: nn.ModuleList) -> None:
    """Scale each block's output projections by 1/sqrt(2*layer), as V-JEPA does, for stable depth."""
    for layer_index, block in enumerate(blocks, start=1):
        with torch.no_grad():
            block.attn.proj.weight.div_((2.0 * layer_index) ** 0.5)
            block.mlp.fc2.weight.div_((2.0 * layer_index) ** 0.5)
