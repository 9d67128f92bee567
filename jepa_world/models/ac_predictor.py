"""Action-conditioned latent predictor (V-JEPA 2-AC style) with a KV cache.

Per time step t the token sequence is ``[action_t, state_t, frame tokens_t]`` (the
state token is dropped when ``state_dim == 0``). Attention is block-causal over steps:
full inside a step, causal across steps. Action/state tokens get a RoPE rotation on
the time segment only; frame tokens get the full 3-D (t, h, w) rotation. The output
of frame t's tokens predicts the tokens of frame t+1; action/state outputs are dropped.

``conditioning="additive"`` instead adds the action (and state) embedding to every frame token
of its step, so a step is its frame tokens alone. That equals DINO-WM's conditioning (the action
concatenated to each token's channels, then projected: ``W [z; a] = W_z z + W_a a``). With few
tokens per frame it is the cheaper layout: at one token per frame a step has 1 token instead of
2-3, and the planner's rollout does a half to a third of the work (docs/speed.md).

Parameter names follow the official ``VisionTransformerPredictorAC`` (``predictor_embed``,
``action_encoder``, ``state_encoder``, ``extrinsics_encoder``, ``predictor_blocks.N.*``,
``predictor_norm``, ``predictor_proj``) so released state dicts load strictly through
``load_official_state_dict``.

Memory: the block-causal mask is built per call from step ids for the T actually fed,
(L, L) bool with L = T * tokens_per_step, never a prebuilt 512-frame mask. Decoding with
``KVCache`` needs no mask at all: a new step attends to every cached step and itself.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_world.frozen_compile import weights_folded
from jepa_world.models.layers import (
    LAYER_NORM_EPS,
    Block,
    init_transformer_weights,
    linear,
    rescale_block_residuals,
)
from jepa_world.models.official import strip_wrapper_prefixes
from jepa_world.models.rope import ROPE_LAYOUTS, RopeTables, grid_positions, rope_tables

log = logging.getLogger(__name__)

# Named widths (dim, depth, num_heads). "vjepa2-ac" is the released 300M predictor.
AC_PREDICTOR_SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (96, 2, 4),
    "mini": (128, 2, 4),  # the shipped reach model's (docs/world_model.md, "Where the near misses are")
    "tiny": (192, 6, 6),
    "small": (384, 12, 12),
    "vjepa2-ac": (1024, 24, 16),
}

# How actions/states enter a step: as their own tokens (V-JEPA 2-AC) or added to the frame tokens.
CONDITIONINGS: tuple[str, ...] = ("tokens", "additive")

# Prefixes that wrap the predictor's keys in official / DDP checkpoints.
OFFICIAL_KEY_PREFIXES: tuple[str, ...] = ("module.", "predictor.", "backbone.")


@dataclass
class ACPredictorConfig:
    encoder_dim: int = 192  # width of the (frozen) encoder tokens fed in and predicted
    action_dim: int = 3
    state_dim: int = 0  # 0 disables the state token
    grid_hw: tuple[int, int] = (8, 8)  # frame token grid actually fed (after any pooling)
    size: str | None = None  # fills dim/depth/num_heads from AC_PREDICTOR_SIZES when given
    dim: int = 192
    depth: int = 6
    num_heads: int = 6
    mlp_ratio: float = 4.0
    rope_layout: str = "official"
    # Spatial RoPE positions are snapped to this grid (official: img_size // patch_size) so a
    # pooled 4x4 grid keeps the positions of the 8x8 grid it came from. None: grid_hw.
    rope_grid_hw: tuple[int, int] | None = None
    # The official predictor owns an extrinsics projection (Linear(action_dim - 1 -> dim)) even
    # when extrinsics are not fed; set 6 to load released weights strictly. It is never used.
    extrinsics_dim: int = 0
    # Predict frame t+1 as frame t plus a learned change (the output head adds its input tokens).
    # Starts training at the copy-last-frame solution, which small CPU runs reach far sooner;
    # the official predictor is absolute (False), which released weights need.
    predict_residual: bool = False
    # "tokens": action/state tokens lead each step (V-JEPA 2-AC, released weights); "additive": their
    # embeddings are added to the step's frame tokens (fewer tokens per step; see the module docstring).
    conditioning: str = "tokens"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.grid_hw = tuple(int(v) for v in self.grid_hw)
        if self.rope_grid_hw is not None:
            self.rope_grid_hw = tuple(int(v) for v in self.rope_grid_hw)
        if self.size is not None:
            if self.size not in AC_PREDICTOR_SIZES:
                raise ValueError(f"unknown predictor size {self.size!r}; expected one of {sorted(AC_PREDICTOR_SIZES)}")
            self.dim, self.depth, self.num_heads = AC_PREDICTOR_SIZES[self.size]
        for name in ("encoder_dim", "action_dim", "dim", "depth", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ACPredictorConfig.{name} must be positive, got {getattr(self, name)}")
        if self.state_dim < 0 or self.extrinsics_dim < 0:
            raise ValueError(f"state_dim/extrinsics_dim must be >= 0, got {self.state_dim}/{self.extrinsics_dim}")
        if len(self.grid_hw) != 2 or min(self.grid_hw) <= 0:
            raise ValueError(f"grid_hw must be two positive ints, got {self.grid_hw}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into num_heads {self.num_heads} heads of even width")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; expected one of {CONDITIONINGS}")
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"unknown rope_layout {self.rope_layout!r}; expected one of {ROPE_LAYOUTS}")

    @property
    def cond_tokens(self) -> int:
        """Action (+ state) tokens at the start of each step (none when they are added to the frame tokens)."""
        return 0 if self.conditioning == "additive" else 1 + (self.state_dim > 0)

    @property
    def frame_tokens(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    @property
    def step_tokens(self) -> int:
        return self.cond_tokens + self.frame_tokens


class KVCache:
    """Per-layer keys/values of the steps decoded so far, in preallocated buffers.

    Buffers are (B, heads, capacity, head_dim); ``length`` tokens are valid. A prefix
    computed at batch 1 can be broadcast into a larger batch with ``expand_batch``.
    """

    def __init__(self, keys: list[Tensor], values: list[Tensor], length: int = 0, steps: int = 0):
        self.keys, self.values, self.length, self.steps = keys, values, length, steps

    @classmethod
    def allocate(cls, depth: int, batch: int, heads: int, capacity: int, head_dim: int, like: Tensor) -> KVCache:
        def buffer() -> Tensor:
            return like.new_empty(batch, heads, capacity, head_dim)

        return cls([buffer() for _ in range(depth)], [buffer() for _ in range(depth)])

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def expand_batch(self, batch: int, capacity: int) -> KVCache:
        """A cache for ``batch`` samples that starts from this (batch-1) prefix; one copy per layer."""
        if self.batch != 1:
            raise ValueError(f"only a batch-1 cache can be expanded, this one has batch {self.batch}")
        out = KVCache.allocate(len(self.keys), batch, self.keys[0].shape[1], capacity, self.keys[0].shape[3], self.keys[0])
        for dst, src in zip(out.keys + out.values, self.keys + self.values):
            dst[:, :, : self.length].copy_(src[:, :, : self.length].expand(batch, -1, -1, -1))
        out.length, out.steps = self.length, self.steps
        return out


class ACPredictor(nn.Module):
    def __init__(self, config: ACPredictorConfig):
        super().__init__()
        self.config = config
        c = config
        self.predictor_embed = nn.Linear(c.encoder_dim, c.dim)
        self.action_encoder = nn.Linear(c.action_dim, c.dim)
        self.state_encoder = nn.Linear(c.state_dim, c.dim) if c.state_dim else None
        self.extrinsics_encoder = nn.Linear(c.extrinsics_dim, c.dim) if c.extrinsics_dim else None
        hidden = int(c.dim * c.mlp_ratio)
        self.predictor_blocks = nn.ModuleList([Block(c.dim, c.num_heads, hidden) for _ in range(c.depth)])
        self.predictor_norm = nn.LayerNorm(c.dim, eps=LAYER_NORM_EPS)
        self.predictor_proj = nn.Linear(c.dim, c.encoder_dim)
        self.apply(lambda m: init_transformer_weights(m, c.init_std))
        rescale_block_residuals(self.predictor_blocks)
        if c.predict_residual:  # start exactly at "next frame = this frame"
            nn.init.zeros_(self.predictor_proj.weight)
        self._step_template = self._build_step_template()
        self._decode_autocast: torch.dtype | None = None  # set by autocast_decoding
        # RoPE tables by (first step, steps, device): a rollout asks for the same few at every step of
        # every planning iteration, and building one costs ~0.24 ms, a tenth of a small model's step.
        self._rope_tables: dict[tuple[int, int, torch.device, bool], RopeTables | None] = {}

    @property
    def head_dim(self) -> int:
        return self.config.dim // self.config.num_heads

    # ------------------------------------------------------------------ positions
    def _build_step_template(self) -> tuple[Tensor, Tensor]:
        """Positions (step_tokens, 3) and RoPE axis mask for one step at time 0."""
        c = self.config
        h, w = c.grid_hw
        rope_h, rope_w = c.rope_grid_hw or c.grid_hw
        frame = grid_positions(1, h, w).to(torch.float32)
        frame[:, 1] *= rope_h / h
        frame[:, 2] *= rope_w / w
        positions = torch.cat([torch.zeros(c.cond_tokens, 3), frame])  # (n, 3)
        axis_mask = torch.ones(c.step_tokens, 3, dtype=torch.bool)
        axis_mask[: c.cond_tokens, 1:] = False  # action/state tokens: time only
        return positions, axis_mask

    def rope_for_steps(self, first_step: int, num_steps: int, device: torch.device,
                       half_split: bool = False) -> RopeTables | None:
        """RoPE tables for steps ``first_step .. first_step + num_steps - 1`` -> (1, 1, num_steps*n, hd), for
        queries and keys in half-split order (``to_half_split``) if ``half_split``.

        None where every position is 0 (step 0 of a one-token frame: the planner's first step): the
        rotation is then exactly the identity (cos 1, sin 0), and skipping it saves a third of a small
        model's per-step operations."""
        key = (first_step, num_steps, torch.device(device), half_split)
        if key not in self._rope_tables:
            tables = self._step_rope_tables(first_step, num_steps, device)
            self._rope_tables[key] = tables.in_half_split_order() if tables is not None and half_split else tables
        return self._rope_tables[key]

    def _step_rope_tables(self, first_step: int, num_steps: int, device: torch.device) -> RopeTables | None:
        with torch.inference_mode(False):  # built by a planner in inference mode, still usable in training
            positions, axis_mask = self._step_template
            steps = torch.arange(first_step, first_step + num_steps, dtype=torch.float32)
            pos = positions.unsqueeze(0).repeat(num_steps, 1, 1)  # (T, n, 3)
            pos[..., 0] = steps[:, None]
            pos = pos.flatten(0, 1).to(device)
            mask = axis_mask.repeat(num_steps, 1).to(device)
            if not pos.any():
                return None
            return rope_tables(pos, self.head_dim, self.config.rope_layout, axis_mask=mask)

    def block_causal_mask(self, num_steps: int, device: torch.device) -> Tensor:
        """(L, L) bool, True where attention is allowed: same or earlier step."""
        step_ids = torch.arange(num_steps, device=device).repeat_interleave(self.config.step_tokens)
        return step_ids[:, None] >= step_ids[None, :]

    # ------------------------------------------------------------------ tokens
    def check_inputs(self, z: Tensor, actions: Tensor, states: Tensor | None) -> None:
        c = self.config
        if z.dim() != 4 or z.shape[2:] != (c.frame_tokens, c.encoder_dim):
            raise ValueError(
                f"frame tokens must be (B, T, {c.frame_tokens}, {c.encoder_dim}) for grid {c.grid_hw}, "
                f"got {tuple(z.shape)}"
            )
        if actions.dim() != 3 or actions.shape[-1] != c.action_dim:
            raise ValueError(f"actions must be (B, T, action_dim={c.action_dim}), got {tuple(actions.shape)}")
        if actions.shape[:2] != z.shape[:2]:
            raise ValueError(f"actions {tuple(actions.shape)} and frame tokens {tuple(z.shape)} disagree on (B, T)")
        if c.state_dim:
            if states is None:
                raise ValueError(f"this predictor has state_dim={c.state_dim}; pass states (B, T, {c.state_dim})")
            if states.dim() != 3 or states.shape[-1] != c.state_dim or states.shape[:2] != z.shape[:2]:
                raise ValueError(
                    f"states must be (B, T, state_dim={c.state_dim}) matching frames {tuple(z.shape[:2])}, "
                    f"got {tuple(states.shape)}"
                )

    def embed_steps(self, z: Tensor, actions: Tensor, states: Tensor | None) -> Tensor:
        """(B,T,N,De), (B,T,A), (B,T,S) -> interleaved tokens (B, T*n, D)."""
        cond = [linear(self.action_encoder, actions).unsqueeze(2)]  # (B, T, 1, D)
        if self.state_encoder is not None:
            cond.append(embed_shared_rows(self.state_encoder, states).unsqueeze(2))
        frames = embed_shared_rows(self.predictor_embed, z)  # (B, T, N, D)
        if self.config.conditioning == "additive":
            return sum(cond, frames).flatten(1, 2)  # (B, T*N, D)
        return torch.cat([*cond, frames], dim=2).flatten(1, 2)

    def read_out(self, x: Tensor, z: Tensor) -> Tensor:
        """Drop action/state outputs and project back: (B, T*n, D) -> (B, T, N, De); z is the input frames."""
        return self.project_frames(self.frame_rows(x, dim=1), z)

    def frame_rows(self, x: Tensor, dim: int) -> Tensor:
        """The frame tokens' entries of a step-interleaved token dim: T*n -> T*N (action/state dropped)."""
        steps = x.shape[dim] // self.config.step_tokens
        rows = x.unflatten(dim, (steps, self.config.step_tokens)).narrow(dim + 1, self.config.cond_tokens,
                                                                          self.config.frame_tokens)
        return rows.flatten(dim, dim + 1)

    def project_frames(self, frames: Tensor, z: Tensor) -> Tensor:
        """(B, T*N, D) frame-token outputs -> (B, T, N, De) predictions of the next frames."""
        frames = frames.unflatten(1, (z.shape[1], self.config.frame_tokens))
        out = linear(self.predictor_proj, self.predictor_norm(frames))
        return z + out if self.config.predict_residual else out

    # ------------------------------------------------------------------ forward
    def forward(self, z: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """Teacher-forced prediction. (B,T,N,De), (B,T,A), (B,T,S) -> (B,T,N,De); output t predicts t+1."""
        self.check_inputs(z, actions, states)
        num_steps = z.shape[1]
        x = self.embed_steps(z, actions, states)
        rope = self.rope_for_steps(0, num_steps, x.device)
        mask = self.block_causal_mask(num_steps, x.device) if num_steps > 1 else None
        for block in self.predictor_blocks:
            x = block(x, rope, mask)
        return self.read_out(x, z)

    def new_cache(self, batch: int, max_steps: int, like: Tensor) -> KVCache:
        """An empty cache on ``like``'s device, in ``like``'s dtype or the autocast_decoding dtype."""
        c = self.config
        if self._decode_autocast is not None:  # autocast writes k/v in this dtype; a wider buffer would cast them back
            like = like.to(self._decode_autocast)
        return KVCache.allocate(c.depth, batch, c.num_heads, max_steps * c.step_tokens, self.head_dim, like)

    def forward_cached(self, z: Tensor, actions: Tensor, states: Tensor | None, cache: KVCache) -> Tensor:
        """Append T new steps to ``cache`` and predict from them: (B,T,N,De) ... -> (B,T,N,De).

        The new steps attend to every cached step (block-causal among themselves), so running
        steps one at a time through a cache equals ``forward`` on the whole sequence. A single token
        that fills a one-token cache is never read back, so its key and value are not written.
        """
        self.check_inputs(z, actions, states)
        num_steps = z.shape[1]
        if cache.batch != z.shape[0]:
            raise ValueError(f"cache batch {cache.batch} != input batch {z.shape[0]}")
        n_new = num_steps * self.config.step_tokens
        start, end = cache.length, cache.length + n_new
        if end > cache.capacity:
            raise ValueError(f"KV cache holds {cache.capacity} tokens, {end} needed; allocate more steps")
        rope = self.rope_for_steps(cache.steps, num_steps, z.device, half_split=half_split_decoding())
        mask = None
        if num_steps > 1:  # new steps see all cached tokens plus earlier/same new steps
            causal = self.block_causal_mask(num_steps, z.device)
            mask = torch.cat([causal.new_ones(n_new, start), causal], dim=1)
        low_precision = self._decode_autocast is not None
        with torch.autocast(z.device.type, dtype=self._decode_autocast, enabled=low_precision):
            out = self._decode_steps(z, actions, states, rope, cache.keys, cache.values, start, mask)
        cache.length, cache.steps = end, cache.steps + num_steps
        return out.to(z.dtype)

    def _decode_steps(self, z: Tensor, actions: Tensor, states: Tensor | None, rope: RopeTables | None,
                      keys: list[Tensor], values: list[Tensor], start: int, mask: Tensor | None) -> Tensor:
        """The tensor work of ``forward_cached``: writes the new keys/values at ``start`` and predicts.

        Kept free of cache bookkeeping, which stays in Python ints, so that a compiled rollout
        (``Dynamics.compile_rollout``) traces it without graph breaks."""
        x = self.embed_steps(z, actions, states)
        end = start + x.shape[1]
        if end == 1 == keys[0].shape[2]:
            # One token into a one-token cache (a horizon-1 rollout from one frame at one token per step): it
            # attends to itself alone, and no later step reads the cache, so nothing is written to it and
            # its query and key are never formed: 1.08-1.10x per action for the shipped reach model.
            for block in self.predictor_blocks:
                x = x + block.attn.attend_self(block.norm1(x))
                x = x + block.mlp(block.norm2(x))
            return self.project_frames(x, z)
        last = len(self.predictor_blocks) - 1
        shared_from = self._first_shared_token(z, states)
        half_split = half_split_decoding()
        for layer, (block, k_buf, v_buf) in enumerate(zip(self.predictor_blocks, keys, values)):
            if layer == 0 and shared_from is not None:
                q, k, v = project_qkv_partly_shared(block, x, rope, shared_from, half_split)
            else:
                q, k, v = block.attn.project_qkv(block.norm1(x), rope, half_split)  # (B, H, n_new, hd)
            k_buf[:, :, start:end] = k
            v_buf[:, :, start:end] = v
            if layer == last:  # only the frame tokens' outputs are read out: the last layer skips the
                # action/state queries, their output projection and MLP (their keys/values are cached above)
                x, q = self.frame_rows(x, dim=1), self.frame_rows(q, dim=2)
                mask = None if mask is None else self.frame_rows(mask, dim=0)
            x = x + block.attn.attend(q, k_buf[:, :, :end], v_buf[:, :, :end], mask)
            x = x + block.mlp(block.norm2(x))
        return self.project_frames(x, z)

    def _first_shared_token(self, z: Tensor, states: Tensor | None) -> int | None:
        """Where one step's input tokens stop differing between samples, or None.

        A rollout's first step from a shared context frame and state gets them broadcast over the batch
        (stride 0): only the leading action token differs per sample. Until the first attention mixes the
        tokens, the rest are the same in every sample, so the first layer norms, projects and rotates
        them once (exact; docs/speed.md, "thirteenth session")."""
        shared = broadcast_over_batch(z) and (states is None or broadcast_over_batch(states))
        if self.config.conditioning != "tokens" or z.shape[1] != 1 or not shared:
            return None
        return 1  # the action token leads each step

    @property
    def decoding_dtype(self) -> torch.dtype | None:
        """The autocast dtype of ``forward_cached`` (None: full precision)."""
        return self._decode_autocast

    def autocast_decoding(self, dtype: torch.dtype | None = torch.bfloat16) -> None:
        """Run ``forward_cached`` (the planner's rollout) under ``torch.autocast(dtype)`` from now on; None
        restores full precision. Teacher-forced ``forward`` (training) is unaffected.

        Not exact: on the 6 x 192 predictor, bf16 predictions differ from fp32 by 0.005 mean absolute
        (layer-normed latents of mean magnitude 0.8). Faster only where the CPU multiplies bf16 in
        hardware: with AMX (this machine's one core: bf16 matmul 1025 GFLOP/s, fp32 181) a 300-sample
        rollout runs 2x faster eager and 2.6x compiled (docs/speed.md, "Rollout routes"); without it, slower.
        The KV cache is kept in ``dtype``; predictions come back in the input's dtype. On a CPU without bf16
        matrix instructions (neither AVX512-BF16 nor AMX) it logs a warning: there a bf16 product runs about
        12x slower than fp32 (1008 x 192 by 192 x 576 on an AVX2 AMD EPYC: 3.7 vs 45.5 GFLOP/s, one thread).
        """
        on_cpu = next(self.parameters()).device.type == "cpu"
        if dtype == torch.bfloat16 and on_cpu and not cpu_multiplies_bf16():
            log.warning("bf16 rollout on a CPU without AVX512-BF16 or AMX: its bf16 products run about 12x "
                        "slower than fp32 here; keep full precision (rollout_precision=fp32)")
        self._decode_autocast = dtype


def half_split_decoding() -> bool:
    """Whether the cached decoding keeps queries and keys in half-split order (``to_half_split``): in a graph with folded weights,
    which reorders the projection's rows once, at compile time. 1.02x per rollout at issue #14's configuration
    (AMD EPYC, AVX-512 and AVX2 code; docs/speed.md, "seventeenth session"). Read while tracing."""
    return weights_folded()


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast pays."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def project_qkv_partly_shared(block: Block, x: Tensor, rope: RopeTables | None, shared_from: int,
                              qk_half_split: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``block.attn.project_qkv(block.norm1(x), rope, qk_half_split)`` for (B, n, D) tokens whose tokens from
    ``shared_from`` on are the same in every sample: those are normed, projected and rotated at batch 1, then
    broadcast."""
    def project(rows: Tensor, tokens: slice) -> tuple[Tensor, Tensor, Tensor]:
        tables = None if rope is None else rope.rows(tokens)
        return block.attn.project_qkv(block.norm1(rows), tables, qk_half_split)

    own = project(x[:, :shared_from], slice(None, shared_from))  # (B, H, shared_from, hd) each
    common = project(x[:1, shared_from:], slice(shared_from, None))  # (1, H, n - shared_from, hd) each
    return tuple(torch.cat([mine, same.expand(x.shape[0], -1, -1, -1)], dim=2) for mine, same in zip(own, common))


def embed_shared_rows(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``, computed once when ``x`` is one row broadcast over the batch (stride 0).

    A rollout's shared context frame and state reach the predictor as ``expand(S, ...)`` views; a
    Linear on such a view runs S identical products (a bmm over a broadcast weight)."""
    if broadcast_over_batch(x):
        return linear(layer, x[:1]).expand(x.shape[0], *([-1] * (x.dim() - 1)))
    return linear(layer, x)


def broadcast_over_batch(x: Tensor) -> bool:
    """Whether ``x`` is one sample viewed as many (an ``expand`` of batch 1: stride 0 along the batch)."""
    return x.shape[0] > 1 and x.stride(0) == 0


def strip_prefixes(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...] = OFFICIAL_KEY_PREFIXES) -> dict[str, Tensor]:
    """Remove wrapper prefixes (``module.``, ``predictor.``, ``backbone.``) from every key."""
    return strip_wrapper_prefixes(state_dict, prefixes)


def load_official_state_dict(model: ACPredictor, state_dict: Mapping[str, Tensor], source: str = "state dict") -> None:
    """Strictly load an official-layout AC predictor state dict (optionally ``module.``-prefixed).

    Raises ValueError naming the missing/unexpected keys or the first shape mismatch; a wrong
    action width is reported as such because it is the most common cause.
    """
    weights = strip_prefixes(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: keys do not match the AC predictor layout; missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            if key == "action_encoder.weight":
                raise ValueError(
                    f"{source}: action dimension mismatch: checkpoint {key} has action_dim={tensor.shape[1]}, "
                    f"model expects action_dim={model.config.action_dim}"
                )
            raise ValueError(
                f"{source}: shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, model {tuple(expected[key].shape)}"
            )
    model.load_state_dict(weights, strict=True)


def layer_norm_tokens(z: Tensor) -> Tensor:
    """Parameter-free layer norm over the channel dim (the V-JEPA target normalisation)."""
    return F.layer_norm(z, (z.shape[-1],))
