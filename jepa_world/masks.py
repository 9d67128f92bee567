"""Multi-block masks for JEPA pretraining, and the collator that draws them.

A generator is called as ``gen(batch_size, grid_shape, generator)`` and returns
``(context_ids (B, Nc), target_ids (B, Nt))``: long token ids (time-major, then
row-major: ``id = t*h*w + row*w + col``), sorted ascending, disjoint, with the same
counts for every sample of the batch and never an empty context.

* ``MultiBlock3DMaskGenerator`` is V-JEPA 2's: ``num_blocks`` spatio-temporal blocks
  whose size is drawn once per batch; the target is their union and the context
  its complement. V-JEPA 2 uses two of them per clip (``VJEPA2_MASKS``).
* ``MultiBlock2DMaskGenerator`` is I-JEPA's: ``num_targets`` target blocks plus one
  large context block from which the target tokens are removed. On a video grid the
  blocks span every time step.

Equal counts: samples keep ``min`` over the batch of their context (target) size,
as in the references. Unlike them, the kept subset is chosen at random rather than
by cutting the highest ids, so the dropped tokens are not always the last frames'
bottom rows.

``MaskCollator`` seeds a fresh ``torch.Generator`` from ``(seed, epoch, batch index)``,
so the masks of a batch do not depend on the worker that built it or on what ran
before; a resumed run that calls ``set_epoch(epoch, start_batch)`` draws exactly
the masks the uninterrupted run drew.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate, get_worker_info

GridShape = tuple[int, int, int]
MaskPair = tuple[Tensor, Tensor]


# ----------------------------------------------------------------------------- configs


def _as_range(owner: str, name: str, value: Any, low: float, high: float, low_open: bool) -> tuple[float, float]:
    """Validate a (min, max) pair inside [low, high] (or (low, high] when low_open)."""
    if isinstance(value, (int, float)):
        value = (value, value)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}.{name}={value!r}: expected a (min, max) pair of numbers") from None
    too_low = lo <= low if low_open else lo < low
    bound = f"{low} < min" if low_open else f"{low} <= min"
    if too_low or hi > high or lo > hi or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{owner}.{name}={value!r}: expected {bound} <= max <= {high}")
    return lo, hi


def _as_positive_aspect(owner: str, name: str, value: Any) -> tuple[float, float]:
    return _as_range(owner, name, value, 0.0, math.inf, low_open=True)


def _check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}.{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


@dataclass
class MultiBlock3DConfig:
    """V-JEPA 2 multi-block mask: ``num_blocks`` blocks of one batch-wide size."""

    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)  # fraction of the h*w grid per block
    temporal_scale: tuple[float, float] = (1.0, 1.0)  # fraction of the t axis per block
    aspect_ratio: tuple[float, float] = (0.75, 1.5)  # block height / width
    min_context: int = 1  # samples with fewer context tokens are redrawn
    max_tries: int = 20  # redraws of a sample's positions before giving up

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.num_blocks = _check_int(owner, "num_blocks", self.num_blocks, 1)
        self.spatial_scale = _as_range(owner, "spatial_scale", self.spatial_scale, 0.0, 1.0, low_open=True)
        self.temporal_scale = _as_range(owner, "temporal_scale", self.temporal_scale, 0.0, 1.0, low_open=True)
        self.aspect_ratio = _as_positive_aspect(owner, "aspect_ratio", self.aspect_ratio)
        self.min_context = _check_int(owner, "min_context", self.min_context, 1)
        self.max_tries = _check_int(owner, "max_tries", self.max_tries, 1)


@dataclass
class MultiBlock2DConfig:
    """I-JEPA multi-block mask: target blocks plus one context block minus the targets."""

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect_ratio: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect_ratio: tuple[float, float] = (1.0, 1.0)
    min_context: int = 4  # I-JEPA's min_keep
    max_tries: int = 20

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.num_targets = _check_int(owner, "num_targets", self.num_targets, 1)
        self.target_scale = _as_range(owner, "target_scale", self.target_scale, 0.0, 1.0, low_open=True)
        self.target_aspect_ratio = _as_positive_aspect(owner, "target_aspect_ratio", self.target_aspect_ratio)
        self.context_scale = _as_range(owner, "context_scale", self.context_scale, 0.0, 1.0, low_open=True)
        self.context_aspect_ratio = _as_positive_aspect(owner, "context_aspect_ratio", self.context_aspect_ratio)
        self.min_context = _check_int(owner, "min_context", self.min_context, 1)
        self.max_tries = _check_int(owner, "max_tries", self.max_tries, 1)


# ----------------------------------------------------------------------------- helpers


def _as_grid(grid_shape: Sequence[int]) -> GridShape:
    """(h, w) or (t, h, w) token grid -> (t, h, w), validated."""
    grid = tuple(int(g) for g in grid_shape)
    if len(grid) == 2:
        grid = (1, *grid)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid_shape={tuple(grid_shape)!r}: expected (h, w) or (t, h, w) with positive sizes")
    return grid  # type: ignore[return-value]


def _uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    lo, hi = bounds
    return lo + float(torch.rand((), generator=generator)) * (hi - lo)


def _spatial_block_size(
    height: int, width: int, scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator
) -> tuple[int, int]:
    """Block (rows, cols) covering ~scale of the grid at aspect rows/cols.

    As in the references each side stays strictly below the grid side (when the grid
    has more than one row/column), so a single block never hides the whole frame.
    """
    area = height * width * _uniform(scale, generator)
    ratio = _uniform(aspect, generator)
    rows = min(max(round(math.sqrt(area * ratio)), 1), max(height - 1, 1))
    cols = min(max(round(math.sqrt(area / ratio)), 1), max(width - 1, 1))
    return rows, cols


def _block_union(
    rows_needed: int,
    num_blocks: int,
    grid: GridShape,
    block: GridShape,
    generator: torch.Generator,
) -> Tensor:
    """Union of ``num_blocks`` randomly placed blocks per sample -> (rows_needed, t*h*w) bool."""
    starts = [
        torch.randint(0, g - b + 1, (rows_needed, num_blocks), generator=generator) for g, b in zip(grid, block)
    ]
    inside = [
        (torch.arange(g) >= s[..., None]) & (torch.arange(g) < s[..., None] + b)  # (R, K, g)
        for g, b, s in zip(grid, block, starts)
    ]
    blocks = inside[0][:, :, :, None, None] & inside[1][:, :, None, :, None] & inside[2][:, :, None, None, :]
    return blocks.any(dim=1).flatten(1)  # (R, t*h*w)


def _redraw_until(draw, batch_size: int, valid, max_tries: int, what: str) -> tuple[Tensor, ...]:
    """Draw masks for the batch, then redraw only the invalid samples (vectorised)."""
    masks = draw(batch_size)
    for attempt in range(max_tries + 1):
        bad = ~valid(*masks)
        if not bool(bad.any()):
            return masks
        if attempt == max_tries:
            break
        masks = tuple(m.clone() for m in masks)
        for mask, redrawn in zip(masks, draw(int(bad.sum()))):
            mask[bad] = redrawn
    raise ValueError(
        f"{what}: a sample kept too little context after {max_tries} redraws; "
        "lower the block scales or counts, or use a larger grid"
    )


def select_equal_counts(mask: Tensor, generator: torch.Generator) -> Tensor:
    """(B, N) bool -> (B, n) sorted ids with n = min row count; larger rows keep a random subset."""
    batch, num_tokens = mask.shape
    count = int(mask.sum(dim=1).min())
    # Random keys made unique per row by their low digits (the column), so the count-th
    # smallest key keeps exactly `count` entries; kthvalue is linear, unlike a full sort.
    keys = torch.randint(0, 2**40, mask.shape, generator=generator) * num_tokens + torch.arange(num_tokens)
    keys.masked_fill_(~mask, torch.iinfo(torch.int64).max)
    threshold = keys.kthvalue(count, dim=1, keepdim=True).values
    return (keys <= threshold).nonzero()[:, 1].view(batch, count)


# ----------------------------------------------------------------------------- generators


class MultiBlock3DMaskGenerator:
    """V-JEPA 2 spatio-temporal multi-block masks (target = union of blocks)."""

    def __init__(self, config: MultiBlock3DConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else MultiBlock3DConfig()
        self.config = MultiBlock3DConfig(**{**{f.name: getattr(base, f.name) for f in fields(base)}, **overrides})

    def sample_block_shape(self, grid_shape: Sequence[int], generator: torch.Generator) -> GridShape:
        """The batch-wide block size (frames, rows, cols) in tokens."""
        t, h, w = _as_grid(grid_shape)
        cfg = self.config
        frames = max(1, int(t * _uniform(cfg.temporal_scale, generator)))
        rows, cols = _spatial_block_size(h, w, cfg.spatial_scale, cfg.aspect_ratio, generator)
        return frames, rows, cols

    def __call__(self, batch_size: int, grid_shape: Sequence[int], generator: torch.Generator) -> MaskPair:
        grid = _as_grid(grid_shape)
        cfg = self.config
        block = self.sample_block_shape(grid, generator)
        (target,) = _redraw_until(
            lambda n: (_block_union(n, cfg.num_blocks, grid, block, generator),),
            batch_size,
            lambda tgt: (~tgt).sum(dim=1) >= cfg.min_context,
            cfg.max_tries,
            f"{cfg} on grid {grid}",
        )
        return select_equal_counts(~target, generator), select_equal_counts(target, generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class MultiBlock2DMaskGenerator:
    """I-JEPA multi-block masks: context block minus the union of the target blocks."""

    def __init__(self, config: MultiBlock2DConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else MultiBlock2DConfig()
        self.config = MultiBlock2DConfig(**{**{f.name: getattr(base, f.name) for f in fields(base)}, **overrides})

    def __call__(self, batch_size: int, grid_shape: Sequence[int], generator: torch.Generator) -> MaskPair:
        grid = _as_grid(grid_shape)
        t, h, w = grid
        cfg = self.config
        target_block = (t, *_spatial_block_size(h, w, cfg.target_scale, cfg.target_aspect_ratio, generator))
        context_block = (t, *_spatial_block_size(h, w, cfg.context_scale, cfg.context_aspect_ratio, generator))

        def draw(n: int) -> tuple[Tensor, Tensor]:
            target = _block_union(n, cfg.num_targets, grid, target_block, generator)
            context = _block_union(n, 1, grid, context_block, generator) & ~target
            return context, target

        context, target = _redraw_until(
            draw,
            batch_size,
            lambda ctx, tgt: ctx.sum(dim=1) >= cfg.min_context,
            cfg.max_tries,
            f"{cfg} on grid {grid}",
        )
        return select_equal_counts(context, generator), select_equal_counts(target, generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


MaskGenerator = MultiBlock3DMaskGenerator | MultiBlock2DMaskGenerator

# Named mask recipes: each is a list of generator specs accepted by build_mask_generators.
MASK_PRESETS: dict[str, list[dict[str, Any]]] = {
    "vjepa2": [
        {"kind": "3d", "num_blocks": 8, "spatial_scale": (0.15, 0.15)},
        {"kind": "3d", "num_blocks": 2, "spatial_scale": (0.7, 0.7)},
    ],
    "ijepa": [{"kind": "2d"}],
}
_GENERATOR_KINDS = {"3d": MultiBlock3DMaskGenerator, "2d": MultiBlock2DMaskGenerator}


def build_mask_generators(specs: str | Sequence[Mapping[str, Any]]) -> list[MaskGenerator]:
    """Build generators from a preset name or specs like ``{"kind": "3d", "num_blocks": 8, ...}``."""
    if isinstance(specs, str):
        if specs not in MASK_PRESETS:
            raise ValueError(f"mask preset {specs!r} is unknown; expected one of {sorted(MASK_PRESETS)}")
        specs = MASK_PRESETS[specs]
    if len(specs) == 0:
        raise ValueError("mask specs are empty; expected at least one generator spec")
    generators = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in _GENERATOR_KINDS:
            raise ValueError(f"mask spec {i} kind={kind!r}: expected one of {sorted(_GENERATOR_KINDS)}")
        generators.append(_GENERATOR_KINDS[kind](**spec))
    return generators


# ----------------------------------------------------------------------------- collator


def token_grid_shape(sample_shape: Sequence[int], patch_size: int, tubelet_size: int) -> GridShape:
    """Token grid (t, h, w) of one sample: (3, T, H, W) clip or (3, H, W) image (one tubelet)."""
    if len(sample_shape) == 4:
        _, frames, height, width = sample_shape
        t = frames // tubelet_size
    elif len(sample_shape) == 3:
        _, height, width = sample_shape
        t = 1
    else:
        raise ValueError(f"sample shape {tuple(sample_shape)}: expected (3, T, H, W) or (3, H, W)")
    if t < 1 or height % patch_size or width % patch_size or (len(sample_shape) == 4 and frames % tubelet_size):
        raise ValueError(
            f"sample shape {tuple(sample_shape)} does not tile into tubelets of {tubelet_size} frames "
            f"x {patch_size}x{patch_size} px"
        )
    return t, height // patch_size, width // patch_size


class MaskCollator:
    """DataLoader ``collate_fn``: stack the samples and draw one mask pair per generator.

    Samples are either a clip tensor, giving ``(clips, [(context_ids, target_ids), ...])``,
    or a tuple ``(clip, *extras)`` (e.g. synthetic factors), giving
    ``(clips, masks, *collated_extras)``.

    Batch ``i`` of an epoch is masked with a generator seeded by ``(seed, epoch, i)``.
    Inside DataLoader workers ``i`` is recovered from the worker id, since map-style
    loaders hand batches to workers round-robin. Call ``set_epoch(epoch, start_batch)``
    before creating each epoch's iterator (with ``persistent_workers=False``, so the
    workers see it); ``start_batch`` is the number of batches a resumed run skips.
    Give each distributed rank its own ``seed``.
    """

    def __init__(
        self,
        generators: Sequence[MaskGenerator],
        seed: int = 0,
        *,
        patch_size: int = 16,
        tubelet_size: int = 2,
    ) -> None:
        if len(generators) == 0:
            raise ValueError("MaskCollator.generators is empty; expected at least one mask generator")
        self.generators = list(generators)
        self.seed = _check_int("MaskCollator", "seed", seed, 0)
        self.patch_size = _check_int("MaskCollator", "patch_size", patch_size, 1)
        self.tubelet_size = _check_int("MaskCollator", "tubelet_size", tubelet_size, 1)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = _check_int("MaskCollator", "epoch", epoch, 0)
        self.start_batch = _check_int("MaskCollator", "start_batch", start_batch, 0)
        self._calls = 0  # batches collated by this copy (one copy per worker)

    def batch_generator(self, batch_index: int) -> torch.Generator:
        """The generator that masks batch ``batch_index`` of the current epoch."""
        state = np.random.SeedSequence([self.seed, self.epoch, batch_index]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)

    def _next_batch_index(self) -> int:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        index = self.start_batch + worker_id + self._calls * num_workers
        self._calls += 1
        return index

    def masks_for(self, batch_size: int, grid_shape: Sequence[int], batch_index: int) -> list[MaskPair]:
        generator = self.batch_generator(batch_index)
        return [gen(batch_size, grid_shape, generator) for gen in self.generators]

    def __call__(self, samples: Sequence[Any]) -> tuple[Any, ...]:
        batch = default_collate(samples)
        clips = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(clips, Tensor):
            raise TypeError(
                f"MaskCollator: samples must be a clip tensor or a tuple (clip, *extras); got {type(samples[0]).__name__}"
            )
        grid = token_grid_shape(clips.shape[1:], self.patch_size, self.tubelet_size)
        masks = self.masks_for(clips.shape[0], grid, self._next_batch_index())
        if isinstance(batch, Tensor):
            return clips, masks
        return (clips, masks, *batch[1:])
